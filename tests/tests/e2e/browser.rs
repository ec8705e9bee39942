//! The console in a real browser: headless Chromium driven through chromedriver (Debian
//! packages `chromium` and `chromium-driver`; `scripts/test.sh` installs them).
//!
//! One analyst signs in, opens a candidate whose feed text is hostile, drafts a bulletin,
//! cannot approve it herself; a second user approves and publishes, and the page shows
//! delivery progress reaching "delivered". On a failure, screenshots of the page at hand
//! and of the main pages are saved to `target/console-screenshots/`.

use super::*;
use fantoccini::{Client, ClientBuilder, Locator};

/// A feed item written to attack the console: script tags, event handlers, `javascript:`
/// links and broken markup: as markup (which the feed parser reduces to text), escaped
/// twice (which survives as literal `<script>` text the console must show, not run), and
/// raw in CDATA.
const HOSTILE_FEED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0"><channel>
<title>Hostile feed</title><link>https://vendor.example/</link><description>test</description>
<item>
<title>Acme infusion pump &amp;lt;script&amp;gt;window.__pwned=1&amp;lt;/script&amp;gt; &lt;img src=x onerror="window.__pwned=2"&gt; flaw</title>
<link>javascript:window.__pwned=3</link>
<guid isPermaLink="false">HOSTILE-1</guid>
<pubDate>Tue, 10 Sep 2024 06:00:00 +0000</pubDate>
<description><![CDATA[Infusion pump remote code execution. <script>window.__pwned=4</script>
<a href="javascript:window.__pwned=5">click here</a> <svg onload="window.__pwned=6"><b>unclosed <i>markup
Raw text: <script>alert(1)</script> & "quotes"
CVEs: CVE-2024-99999
Highest CVSS v3 score 9.8: CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H]]></description>
</item>
</channel></rss>"#;

const AMY_PASSWORD: &str = "amy's long password 1";
const BEN_PASSWORD: &str = "ben's long password 22";
const CAT_PASSWORD: &str = "cat's long password 333";

/// `broadcast user add NAME --role R` with the password on standard input.
fn add_user(config: &Path, name: &str, role: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new(broadcast_bin())
        .arg("--config")
        .arg(config)
        .args(["user", "add", name, "--role", role])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "user add {name}: {}", String::from_utf8_lossy(&out.stderr));
}

async fn serve(body: &'static str) -> String {
    let app = axum::Router::new().route(
        "/feed.xml",
        get(move || async move { ([(header::CONTENT_TYPE, "application/rss+xml")], body) }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}/feed.xml")
}

/// chromedriver on a free port, and a headless Chromium session through it.
async fn browser(profile: &Path) -> (Proc, Client) {
    let port = free_port();
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver is needed (apt-get install chromium chromium-driver; scripts/test.sh does)");
    let driver = Proc(driver);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--no-first-run",
                     "--disable-sync", "--disable-quic", "--window-size=1280,1000",
                     format!("--user-data-dir={}", profile.display())],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");
    (driver, client)
}

type Step = Result<(), String>;

macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

async fn js(c: &Client, script: &str) -> Result<Value, String> {
    c.execute(script, vec![]).await.map_err(err)
}

/// Waits (polling the page) until `script` returns true.
async fn until(c: &Client, what: &str, secs: u64, script: &str) -> Step {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if js(c, script).await? == Value::Bool(true) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sign_in(c: &Client, base: &str, name: &str, password: &str) -> Step {
    c.goto(&format!("{base}/console/login")).await.map_err(err)?;
    c.find(Locator::Id("name")).await.map_err(err)?.send_keys(name).await.map_err(err)?;
    c.find(Locator::Id("password")).await.map_err(err)?.send_keys(password).await.map_err(err)?;
    c.find(Locator::Id("signin")).await.map_err(err)?.click().await.map_err(err)?;
    until(c, "the queue after signing in", 10, "return location.pathname === '/console/queue'").await?;
    let who = c.find(Locator::Css(".who")).await.map_err(err)?.text().await.map_err(err)?;
    check!(who.contains(name), "signed in as `{who}`, not {name}");
    Ok(())
}

/// Nothing from the feed ran: no flag set, no script element but the console's own, no
/// event-handler attribute, no `javascript:` link.
async fn nothing_executed(c: &Client, page: &str) -> Step {
    let v = js(
        c,
        "return { pwned: window.__pwned === undefined ? null : window.__pwned,
                  scripts: Array.from(document.scripts).map(s => s.src),
                  handlers: document.querySelectorAll('[onerror],[onload],[onclick],[onmouseover]').length,
                  jslinks: Array.from(document.querySelectorAll('a[href]')).filter(a => a.href.trim().toLowerCase().startsWith('javascript:')).length }",
    )
    .await?;
    check!(v["pwned"].is_null(), "{page}: feed script ran (window.__pwned = {})", v["pwned"]);
    check!(
        v["scripts"].as_array().is_some_and(
            |s| s.len() == 1 && s[0].as_str().unwrap_or("").ends_with("/console/static/console.js")
        ),
        "{page}: unexpected script elements {}",
        v["scripts"]
    );
    check!(v["handlers"] == 0, "{page}: {} elements carry event handlers", v["handlers"]);
    check!(v["jslinks"] == 0, "{page}: {} javascript: links are clickable", v["jslinks"]);
    Ok(())
}

/// Every form control has a label, every button a name, the page a language and a main
/// landmark with a level-one heading.
async fn accessible(c: &Client, page: &str) -> Step {
    let v = js(
        c,
        "const unlabelled = Array.from(document.querySelectorAll('input, select, textarea'))
           .filter(e => e.type !== 'hidden' && e.labels.length === 0 && !e.getAttribute('aria-label'))
           .map(e => e.name || e.id);
         const nameless = Array.from(document.querySelectorAll('button, a'))
           .filter(e => !e.textContent.trim() && !e.getAttribute('aria-label')).length;
         return { unlabelled, nameless, lang: document.documentElement.lang,
                  main: !!document.querySelector('main'), h1: document.querySelectorAll('h1').length };",
    )
    .await?;
    check!(
        v["unlabelled"].as_array().is_some_and(Vec::is_empty),
        "{page}: controls without a label: {}",
        v["unlabelled"]
    );
    check!(v["nameless"] == 0, "{page}: {} buttons or links without a name", v["nameless"]);
    check!(v["lang"] == "en" && v["main"] == true && v["h1"] == 1, "{page}: landmarks {v}");
    Ok(())
}

async fn flow(c: &Client, rig: &Rig, reference: &mut String) -> Step {
    let base = &rig.base;
    sign_in(c, base, "amy", AMY_PASSWORD).await?;

    // The queue: the hostile candidate is listed, its markup shown as text.
    let link = c.find(Locator::Css("#queue a.adv")).await.map_err(err)?;
    let title = link.text().await.map_err(err)?;
    check!(title.contains("<script>window.__pwned=1</script>"), "the title is not readable as text: {title}");
    nothing_executed(c, "queue").await?;
    accessible(c, "queue").await?;
    link.click().await.map_err(err)?;

    // The advisory: readable, nothing runs, the javascript: link is shown but not clickable.
    until(c, "the advisory page", 10, "return !!document.getElementById('advisory-title')").await?;
    let summary = c.find(Locator::Id("advisory-summary")).await.map_err(err)?.text().await.map_err(err)?;
    check!(summary.contains("Infusion pump remote code execution"), "summary not readable: {summary}");
    check!(summary.contains("click here") && summary.contains("unclosed"), "summary lost text: {summary}");
    let unsafe_links =
        js(c, "return Array.from(document.querySelectorAll('.unsafe')).map(e => e.textContent)").await?;
    check!(
        unsafe_links.to_string().contains("javascript:window.__pwned=3"),
        "the javascript: reference should be shown as plain text: {unsafe_links}"
    );
    nothing_executed(c, "advisory").await?;
    accessible(c, "advisory").await?;

    // Draft a bulletin; edit it with the live preview.
    c.find(Locator::Id("draft")).await.map_err(err)?.click().await.map_err(err)?;
    until(c, "the editor", 10, "return !!document.getElementById('editor')").await?;
    nothing_executed(c, "editor").await?;
    accessible(c, "editor").await?;
    *reference = js(c, "return location.pathname.split('/')[3]").await?.as_str().unwrap_or("").to_owned();
    let title_box = c.find(Locator::Id("title")).await.map_err(err)?;
    title_box.clear().await.map_err(err)?;
    title_box.send_keys("Acme infusion pumps: patch now <b>bold?</b>").await.map_err(err)?;
    until(
        c,
        "the live preview to show the new title",
        10,
        "return document.getElementById('preview-subject').textContent.includes('patch now <b>bold?</b>')",
    )
    .await?;
    let srcdoc = js(c, "return document.getElementById('preview-html').srcdoc").await?;
    let srcdoc = srcdoc.as_str().unwrap_or("");
    check!(
        srcdoc.contains("patch now &lt;b&gt;bold?") && !srcdoc.contains("<b>bold?"),
        "email preview HTML does not escape the title"
    );
    check!(!srcdoc.contains("href=\"javascript:"), "the email links a javascript: reference");
    check!(!srcdoc.to_lowercase().contains("<script"), "the email preview carries a script element");
    let webhook =
        c.find(Locator::Id("preview-webhook")).await.map_err(err)?.prop("textContent").await.map_err(err)?;
    check!(
        webhook.unwrap_or_default().contains("patch now <b>bold?</b>"),
        "the webhook JSON preview does not follow the editor"
    );
    c.find(Locator::Id("tlp")).await.map_err(err)?.select_by_value("CLEAR").await.map_err(err)?;
    c.find(Locator::Id("threat_level")).await.map_err(err)?.select_by_value("High").await.map_err(err)?;
    nothing_executed(c, "editor after preview").await?;
    c.find(Locator::Id("save-submit")).await.map_err(err)?.click().await.map_err(err)?;

    // In review: amy wrote it, so she is offered no approve button, and a forged request
    // with her own CSRF token is refused by the server.
    until(
        c,
        "the bulletin in review",
        10,
        "return (document.getElementById('bulletin-state')||{}).textContent === 'in review'",
    )
    .await?;
    check!(c.find(Locator::Id("act-approve")).await.is_err(), "the author is offered the approve button");
    let note = c.find(Locator::Id("review-note")).await.map_err(err)?.text().await.map_err(err)?;
    check!(note.contains("four-eyes"), "no four-eyes note: {note}");
    let forged = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const csrf = document.querySelector('input[name=csrf]').value;
             fetch(location.pathname + '/act/approve', { method: 'POST', body: new URLSearchParams({ csrf }) })
               .then(r => r.text().then(t => done({ status: r.status, text: t })));",
            vec![],
        )
        .await
        .map_err(err)?;
    check!(forged["status"] == 403, "amy approving her own bulletin: {}", forged["status"]);
    check!(forged["text"].as_str().unwrap_or("").contains("four-eyes"), "refusal does not say why");
    let rendered = js(c, "return fetch(location.pathname + '/email.html').then(r => r.text())").await?;
    let rendered = rendered.as_str().unwrap_or("");
    check!(!rendered.to_lowercase().contains("<script"), "the email HTML carries a script element");
    check!(
        rendered.contains("&lt;script&gt;") || rendered.contains("&lt;b&gt;"),
        "email HTML lost the escaped text"
    );

    // Sign out; ben approves and publishes.
    c.find(Locator::Css(".signout button")).await.map_err(err)?.click().await.map_err(err)?;
    until(c, "the sign-in page", 10, "return location.pathname === '/console/login'").await?;
    sign_in(c, base, "ben", BEN_PASSWORD).await?;
    c.goto(&format!("{base}/console/bulletins/{reference}")).await.map_err(err)?;
    c.find(Locator::Id("comment"))
        .await
        .map_err(err)?
        .send_keys("Checked against the vendor notice.")
        .await
        .map_err(err)?;
    c.find(Locator::Id("act-approve")).await.map_err(err)?.click().await.map_err(err)?;
    until(
        c,
        "approval",
        10,
        "return (document.getElementById('bulletin-state')||{}).textContent === 'approved'",
    )
    .await?;
    // Publishing asks for confirmation first; accept it.
    js(c, "window.confirm = () => true; return true").await?;
    c.find(Locator::Id("act-publish")).await.map_err(err)?.click().await.map_err(err)?;
    until(
        c,
        "the published bulletin",
        10,
        "return (document.getElementById('bulletin-state')||{}).textContent === 'published'",
    )
    .await?;

    // Live progress, updated by the page itself, until every delivery is done.
    until(
        c,
        "delivery progress to finish",
        60,
        "return document.getElementById('progress').dataset.done === 'true'",
    )
    .await?;
    let counts = js(
        c,
        "const n = k => Number(document.querySelector(`[data-count=${k}]`).textContent); \
         return { delivered: n('delivered'), total: n('total'), failed: n('failed') }",
    )
    .await?;
    check!(counts["total"].as_i64() == Some(2), "one email and one webhook expected: {counts}");
    check!(counts["delivered"] == counts["total"], "not everything delivered: {counts}");
    nothing_executed(c, "published bulletin").await?;
    accessible(c, "published bulletin").await?;

    // An admin sends a test to the organisation's endpoint and checks the audit chain.
    c.find(Locator::Css(".signout button")).await.map_err(err)?.click().await.map_err(err)?;
    until(c, "the sign-in page", 10, "return location.pathname === '/console/login'").await?;
    accessible(c, "sign-in").await?;
    sign_in(c, base, "cat", CAT_PASSWORD).await?;
    c.goto(&format!("{base}/console/organisations")).await.map_err(err)?;
    accessible(c, "organisations").await?;
    c.find(Locator::LinkText("Trust")).await.map_err(err)?.click().await.map_err(err)?;
    until(c, "the organisation page", 10, "return !!document.querySelector('.send-test')").await?;
    accessible(c, "organisation").await?;
    c.find(Locator::Css(".send-test")).await.map_err(err)?.click().await.map_err(err)?;
    until(c, "the test result", 15, "return !!document.getElementById('notice')").await?;
    let notice = c.find(Locator::Id("notice")).await.map_err(err)?.text().await.map_err(err)?;
    check!(notice.contains("Test sent") && notice.contains("HTTP 204"), "send test: {notice}");
    c.goto(&format!("{base}/console/feeds")).await.map_err(err)?;
    let feeds = c.find(Locator::Css("main table")).await.map_err(err)?.text().await.map_err(err)?;
    check!(feeds.contains("hostile") && feeds.contains("ok"), "feed health: {feeds}");
    accessible(c, "feeds").await?;
    c.goto(&format!("{base}/console/audit")).await.map_err(err)?;
    c.find(Locator::Id("verify")).await.map_err(err)?.click().await.map_err(err)?;
    until(c, "the audit check", 10, "return !!document.getElementById('audit-check')").await?;
    let check_text = c.find(Locator::Id("audit-check")).await.map_err(err)?.text().await.map_err(err)?;
    check!(check_text.contains("intact"), "audit: {check_text}");
    let log = c.find(Locator::Css("main table")).await.map_err(err)?.text().await.map_err(err)?;
    for action in ["user.signin", "bulletin.approve", "bulletin.publish", "endpoint.test"] {
        check!(log.contains(action), "the audit page does not list {action}");
    }
    accessible(c, "audit").await?;
    if std::env::var_os("CONSOLE_SCREENSHOTS").is_some() {
        screenshots(c, base, reference).await;
    }
    Ok(())
}

/// Saves the page at hand and the main pages as PNGs; returns the folder.
async fn screenshots(c: &Client, base: &str, reference: &str) -> PathBuf {
    let dir = repo().join("target/console-screenshots");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(png) = c.screenshot().await {
        let _ = std::fs::write(dir.join("failure.png"), png);
    }
    let mut pages = vec![
        ("queue", "/console/queue".to_owned()),
        ("bulletins", "/console/bulletins".to_owned()),
        ("organisations", "/console/organisations".to_owned()),
        ("feeds", "/console/feeds".to_owned()),
        ("audit", "/console/audit".to_owned()),
    ];
    if !reference.is_empty() {
        pages.push(("bulletin", format!("/console/bulletins/{reference}")));
    }
    for (name, path) in pages {
        if c.goto(&format!("{base}{path}")).await.is_ok()
            && let Ok(png) = c.screenshot().await
        {
            let _ = std::fs::write(dir.join(format!("{name}.png")), png);
        }
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyst_and_approver_publish_a_hostile_advisory_in_a_real_browser() {
    let mail = tempfile::tempdir().unwrap();
    let (_smtp, smtp_port) = start_smtp(&mail.path().join("maildir"));
    let hooks: Arc<Mutex<Vec<Hook>>> = Arc::default();
    let receiver = start_receiver(hooks.clone()).await;
    let feed = serve(HOSTILE_FEED).await;
    let rig = Rig::start(
        &format!(
            "contacts = [{{ email = \"soc-lead@trust.nhs.test\" }}]\n\
             endpoints = [{{ url = \"{receiver}/soc\", secret = \"{SOC_SECRET}\" }}]"
        ),
        &format!(
            "old_after_days = 3650\n{}[webhook]\nallow_networks = [\"127.0.0.0/8\"]\n[delivery]\npoll_interval_ms = 200\n\
             [[feeds]]\ntype = \"rss\"\nid = \"hostile\"\nurl = \"{feed}\"\nschedule = \"*/2 * * * * *\"\n",
            smtp_config(smtp_port)
        ),
    )
    .await;
    add_user(&rig.config, "amy", "approver", AMY_PASSWORD);
    add_user(&rig.config, "ben", "approver", BEN_PASSWORD);
    add_user(&rig.config, "cat", "admin", CAT_PASSWORD);
    wait_for("the hostile advisory to be collected and triaged", 30, || async {
        let v = rig.api.get(ALICE, "/api/candidates").await;
        (!v["candidates"].as_array().unwrap().is_empty()).then_some(())
    })
    .await;

    let profile = tempfile::tempdir().unwrap();
    let (_driver, c) = browser(profile.path()).await;
    let mut reference = String::new();
    let result = flow(&c, &rig, &mut reference).await;
    if let Err(e) = result {
        let dir = screenshots(&c, &rig.base, &reference).await;
        let _ = c.close().await;
        panic!("{e}\n(screenshots in {})", dir.display());
    }
    let _ = c.close().await;

    // What the receivers got is the escaped text, verified as a SOC would.
    let hooks = hooks.lock().unwrap().clone();
    assert_eq!(hooks.len(), 2, "the bulletin and the test: {hooks:?}");
    assert!(hooks.iter().all(|h| h.signature_valid));
    let body: Value = serde_json::from_str(&hooks[0].body).unwrap();
    assert_eq!(body["data"]["title"], "Acme infusion pumps: patch now <b>bold?</b>", "{body}");
    let test: Value = serde_json::from_str(&hooks[1].body).unwrap();
    assert_eq!(test["type"], "broadcast.test", "{test}");
}
