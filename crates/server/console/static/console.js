// Broadcast console: the little script there is. No inline handlers (the CSP forbids them).
"use strict";

// Buttons that ask first (publish, withdraw).
document.addEventListener("click", (ev) => {
  const b = ev.target.closest("[data-confirm]");
  if (b && !window.confirm(b.dataset.confirm)) ev.preventDefault();
});

// The editor's live preview: the form as typed, rendered by the server, nothing saved.
const editor = document.getElementById("editor");
if (editor) {
  const status = document.getElementById("preview-status");
  let timer = null;
  const refresh = async () => {
    status.textContent = "updating…";
    try {
      const resp = await fetch(editor.dataset.preview, {
        method: "POST",
        body: new URLSearchParams(new FormData(editor)),
        credentials: "same-origin",
      });
      const p = await resp.json();
      if (!resp.ok || p.error) { status.textContent = p.error || "preview failed"; return; }
      document.getElementById("preview-subject").textContent = p.subject;
      document.getElementById("preview-html").srcdoc = p.html;
      document.getElementById("preview-text").textContent = p.text;
      document.getElementById("preview-webhook").textContent = p.webhook;
      status.textContent = "up to date";
    } catch (e) {
      status.textContent = "preview unavailable";
    }
  };
  editor.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(refresh, 300); });
}

// Delivery progress on a published bulletin, every second until nothing is pending.
const progress = document.getElementById("progress");
if (progress) {
  const bar = progress.querySelector("progress");
  const tick = async () => {
    try {
      const resp = await fetch(progress.dataset.url, { credentials: "same-origin" });
      if (resp.ok) {
        const p = await resp.json();
        for (const el of progress.querySelectorAll("[data-count]")) {
          const k = el.dataset.count;
          el.textContent = k === "total" ? p.total : (p.counts[k] || 0);
        }
        bar.max = p.total || 1;
        bar.value = p.counts.delivered || 0;
        if (!(p.counts.pending > 0)) { progress.dataset.done = "true"; return; }
      }
    } catch (e) { /* try again */ }
    setTimeout(tick, 1000);
  };
  tick();
}
