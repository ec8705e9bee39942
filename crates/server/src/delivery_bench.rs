//! `broadcast bench latency`: from approval to first delivery, measured.
//!
//! Runs the real delivery worker in-process against a real local HTTP receiver (which checks
//! every signature), on the configured store or a throwaway SQLite file. For each of N
//! bulletins it times from the publish call (the transition that writes the outbox rows and
//! wakes the workers) to the receiver having the webhook.

use crate::app::App;
use crate::config::Settings;
use anyhow::{Context, Result, bail};
use axum::routing::post;
use broadcast_core::{Action, Analyst, BulletinContent, Role, ThreatLevel, Tlp};
use chrono::Utc;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An author and an approver for a benchmark's bulletins (unique names, so runs can share a
/// store).
async fn bench_analysts(app: &App, now: chrono::DateTime<Utc>) -> Result<(Analyst, Analyst)> {
    let tag = now.timestamp_millis();
    let alice = app
        .store
        .create_analyst(&format!("bench-a-{tag}"), Role::Analyst, &format!("bench-a-{tag}"), now)
        .await?;
    let bob = app
        .store
        .create_analyst(&format!("bench-b-{tag}"), Role::Approver, &format!("bench-b-{tag}"), now)
        .await?;
    Ok((alice, bob))
}

pub async fn latency(mut settings: Settings, bulletins: usize, store_url: Option<String>) -> Result<()> {
    let dir = tempfile::tempdir()?;
    settings.store.url =
        store_url.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    settings.webhook.allow_networks = vec!["127.0.0.0/8".into()];
    settings.delivery.poll_interval_ms = 1000;
    let secret = broadcast_distribute::sign::secret_from_bytes(&crate::auth::random_secret_bytes());
    let receiver = Receiver::start(secret.clone(), true).await?;
    let url = format!("http://127.0.0.1:{}/hook/0", receiver.port);

    let app = App::open(settings).await.context("opening the benchmark store")?;
    let kind = app.store.kind();
    let now = Utc::now();
    let org = app
        .store
        .create_organisation(
            &format!("Bench {}", now.timestamp_nanos_opt().unwrap_or(0)),
            Tlp::Clear,
            ThreatLevel::Information,
            now,
        )
        .await?;
    app.store.add_endpoint(org.id.as_str(), &url, &secret, now).await?;
    let (alice, bob) = bench_analysts(&app, now).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(crate::stages::delivery::run(app.clone(), stop_rx));

    let content = BulletinContent::new("Latency probe", ThreatLevel::High, Tlp::Clear);
    let mut samples: Vec<Duration> = Vec::with_capacity(bulletins);
    for _ in 0..bulletins {
        let b = app.store.create_bulletin(&content, &[], &alice.id, "BENCH", Utc::now()).await?;
        app.store
            .transition_bulletin(b.id.as_str(), Action::Submit, &alice.id, None, None, Utc::now())
            .await?;
        app.store
            .transition_bulletin(b.id.as_str(), Action::Approve, &bob.id, None, None, Utc::now())
            .await?;
        // Approved: from here to the receiver having it is what an operator waits for.
        let start = Instant::now();
        app.store
            .transition_bulletin(b.id.as_str(), Action::Publish, &alice.id, None, None, Utc::now())
            .await?;
        app.wake_delivery.notify_one();
        let deadline = start + Duration::from_secs(30);
        loop {
            if let Some(at) = receiver.arrival(b.id.as_str()) {
                samples.push(at.duration_since(start));
                break;
            }
            if Instant::now() > deadline {
                bail!("bulletin {} not delivered within 30 s", b.reference);
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let _ = stop_tx.send(true);
    let _ = worker.await;
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "approval to first delivery ({kind:?}, {bulletins} bulletins, one webhook each): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(*samples.last().expect("at least one sample"))
    );
    Ok(())
}

/// Which channel `bench throughput` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchChannel {
    Email,
    Webhook,
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in MB.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn find_tool(name: &str) -> Result<std::path::PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = std::path::Path::new(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("`{name}` not found: install it first (Debian: apt-get install postfix wrk)")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Postfix's `smtp-sink` on a free local port, killed when dropped.
struct Sink {
    child: std::process::Child,
    port: u16,
}

impl Sink {
    fn start() -> Result<Sink> {
        let bin = find_tool("smtp-sink")?;
        let port = free_port()?;
        let mut cmd = std::process::Command::new(bin);
        // -c: count sessions/messages; as root it must drop privileges (-u).
        cmd.args(["-u", "nobody", &format!("127.0.0.1:{port}"), "1024"]);
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::inherit());
        let child = cmd.spawn().context("starting smtp-sink")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("smtp-sink did not start listening on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Sink { child, port })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A local webhook receiver that verifies every signature, counts what it accepted and, if
/// asked, when each bulletin first arrived.
struct Receiver {
    port: u16,
    accepted: std::sync::atomic::AtomicU64,
    arrivals: Option<Mutex<HashMap<String, Instant>>>,
}

impl Receiver {
    async fn start(secret: String, track_arrivals: bool) -> Result<Arc<Receiver>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let receiver = Arc::new(Receiver {
            port: listener.local_addr()?.port(),
            accepted: Default::default(),
            arrivals: track_arrivals.then(Default::default),
        });
        let r = receiver.clone();
        let app = axum::Router::new().route(
            "/hook/{n}",
            post(move |h: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (r, key) = (r.clone(), secret.clone());
                async move { r.accept(&key, &h, &body) }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(receiver)
    }

    fn accept(&self, key: &str, h: &axum::http::HeaderMap, body: &[u8]) -> axum::http::StatusCode {
        let at = Instant::now();
        let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let ts: i64 = get("webhook-timestamp").parse().unwrap_or(0);
        let now = Utc::now().timestamp();
        let sig = get("webhook-signature");
        if broadcast_distribute::sign::verify(key, get("webhook-id"), ts, body, sig, now, 300).is_err() {
            return axum::http::StatusCode::UNAUTHORIZED;
        }
        self.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(arrivals) = &self.arrivals {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            if let Some(id) = v["data"]["id"].as_str() {
                arrivals.lock().expect("lock").entry(id.to_owned()).or_insert(at);
            }
        }
        axum::http::StatusCode::NO_CONTENT
    }

    fn arrival(&self, bulletin: &str) -> Option<Instant> {
        self.arrivals.as_ref()?.lock().expect("lock").get(bulletin).copied()
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// `broadcast bench throughput`: one bulletin fanned out to `recipients` email contacts
/// (into Postfix's smtp-sink) or webhook endpoints (a local receiver verifying every
/// signature), timed from publish to the last delivery recorded, and compared in the same
/// run with the reference tool (smtp-source / wrk) sending the same number of same-size
/// messages to the same receiver.
pub async fn throughput(
    mut settings: Settings,
    channel: BenchChannel,
    recipients: usize,
    store_url: Option<String>,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    settings.store.url =
        store_url.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    settings.webhook.allow_networks = vec!["127.0.0.0/8".into()];
    // Every endpoint is a different URL on the one local receiver: lift the per-host cap
    // (which would otherwise hold the whole run to 16 requests in flight) to the worker's.
    settings.delivery.per_host_concurrency = settings.delivery.concurrency;
    let secret = broadcast_distribute::sign::secret_from_bytes(&crate::auth::random_secret_bytes());
    let mut sink = None;
    let mut hook_port = 0;
    let mut receiver: Option<Arc<Receiver>> = None;
    match channel {
        BenchChannel::Email => {
            let s = Sink::start()?;
            settings.email.transport = broadcast_distribute::email::TransportKind::Smtp;
            let smtp = settings.email.smtp.get_or_insert_with(|| broadcast_distribute::email::SmtpSettings {
                host: "127.0.0.1".into(),
                port: s.port,
                tls: broadcast_distribute::email::SmtpTls::None,
                username: None,
                password: None,
                timeout_secs: 30,
                max_connections: 8,
                max_messages_per_connection: 100,
            });
            smtp.host = "127.0.0.1".into();
            smtp.port = s.port;
            smtp.tls = broadcast_distribute::email::SmtpTls::None;
            smtp.username = None;
            smtp.password = None;
            sink = Some(s);
        }
        BenchChannel::Webhook => {
            let r = Receiver::start(secret.clone(), false).await?;
            hook_port = r.port;
            receiver = Some(r);
        }
    }
    let app = App::open(settings.clone()).await.context("opening the benchmark store")?;
    let kind = app.store.kind();
    let now = Utc::now();
    let org = app
        .store
        .create_organisation("Bench organisation", Tlp::Clear, ThreatLevel::Information, now)
        .await?;
    eprintln!("setting up {recipients} recipients …");
    let setup = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..16 {
        let (store, org, secret) = (app.store.clone(), org.id.clone(), secret.clone());
        tasks.spawn(async move {
            for i in (lane..recipients).step_by(16) {
                match channel {
                    BenchChannel::Email => {
                        let email = format!("reader{i}@nhs-trust-{}.example.org", i % 997);
                        store.add_contact(org.as_str(), &email, &format!("Reader {i}"), Utc::now()).await?;
                    }
                    BenchChannel::Webhook => {
                        let url = format!("http://127.0.0.1:{hook_port}/hook/{i}");
                        store.add_endpoint(org.as_str(), &url, &secret, Utc::now()).await?;
                    }
                }
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    eprintln!("set up in {:.1} s", setup.elapsed().as_secs_f64());
    let (alice, bob) = bench_analysts(&app, now).await?;
    let mut content = BulletinContent::new(
        "Throughput probe: remote code execution in an infusion pump gateway",
        ThreatLevel::High,
        Tlp::Clear,
    );
    content.summary = "A vulnerability in the management interface lets an unauthenticated attacker on the clinical network run code. Apply the vendor's update.".into();
    let b = app.store.create_bulletin(&content, &[], &alice.id, "BENCH", Utc::now()).await?;
    app.store.transition_bulletin(b.id.as_str(), Action::Submit, &alice.id, None, None, Utc::now()).await?;
    app.store.transition_bulletin(b.id.as_str(), Action::Approve, &bob.id, None, None, Utc::now()).await?;

    // The reference tool first, on the same receiver, with messages of the same size.
    let reference = match channel {
        BenchChannel::Email => {
            let sink = sink.as_ref().expect("sink started");
            let size = sample_email_size(&app, &b.id).await?;
            let conns = settings.email.smtp.as_ref().map(|s| s.max_connections).unwrap_or(8);
            let source = find_tool("smtp-source")?;
            let mut rates = Vec::new();
            for reuse in [true, false] {
                let mut cmd = std::process::Command::new(&source);
                if reuse {
                    cmd.arg("-d");
                }
                cmd.args([
                    "-s",
                    &conns.to_string(),
                    "-m",
                    &recipients.to_string(),
                    "-l",
                    &size.to_string(),
                    "-f",
                    "bulletins@example.org",
                    "-t",
                    "reader@example.org",
                    &format!("127.0.0.1:{}", sink.port),
                ]);
                let t = Instant::now();
                let status = cmd.status().context("running smtp-source")?;
                if !status.success() {
                    bail!("smtp-source failed: {status}");
                }
                let rate = recipients as f64 / t.elapsed().as_secs_f64();
                println!(
                    "smtp-source ({conns} sessions, {} B messages, {}): {rate:.0} messages/s",
                    size,
                    if reuse { "connections reused (-d)" } else { "one connection per message" }
                );
                rates.push(rate);
            }
            rates[0]
        }
        BenchChannel::Webhook => {
            let wrk = find_tool("wrk")?;
            let body = broadcast_distribute::payload::for_format(
                broadcast_core::EndpointFormat::Broadcast,
                &app.store.get_bulletin(b.id.as_str()).await?,
                &app.bulletin_url(&b.reference),
            );
            let ts = Utc::now().timestamp();
            let sig = broadcast_distribute::sign::sign(&secret, "msg_wrk", ts, body.as_bytes())?;
            let script = dir.path().join("post.lua");
            std::fs::write(
                &script,
                format!(
                    "wrk.method = \"POST\"\nwrk.body = {body:?}\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"webhook-id\"] = \"msg_wrk\"\nwrk.headers[\"webhook-timestamp\"] = \"{ts}\"\nwrk.headers[\"webhook-signature\"] = \"{sig}\"\n"
                ),
            )?;
            let conns = settings.delivery.concurrency.min(recipients).max(1);
            let out = std::process::Command::new(wrk)
                .args([
                    "-t",
                    "1",
                    "-c",
                    &conns.to_string(),
                    "-d",
                    "5s",
                    "-s",
                    &script.display().to_string(),
                    &format!("http://127.0.0.1:{hook_port}/hook/0"),
                ])
                .output()
                .context("running wrk")?;
            let text = String::from_utf8_lossy(&out.stdout);
            let rate: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix("Requests/sec:"))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("could not read wrk's output:\n{text}"))?;
            let non2xx = text.lines().find(|l| l.contains("Non-2xx"));
            if let Some(l) = non2xx {
                bail!("the receiver refused wrk's requests ({}): check the signature", l.trim());
            }
            println!(
                "wrk (1 thread, {conns} connections, {} B bodies, keep-alive): {rate:.0} requests/s",
                body.len()
            );
            let alone = client_alone(&app, hook_port, &secret, &body, recipients, conns).await?;
            println!(
                "broadcast's webhook client alone (signing and sending as the worker does, no database): {alone:.0} requests/s ({:.0} % of wrk)",
                100.0 * alone / rate
            );
            rate
        }
    };
    // What wrk sent is not counted.
    let accepted_before = receiver.as_ref().map(|r| r.accepted()).unwrap_or(0);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(crate::stages::delivery::run(app.clone(), stop_rx));
    let start = Instant::now();
    app.store.transition_bulletin(b.id.as_str(), Action::Publish, &alice.id, None, None, Utc::now()).await?;
    app.wake_delivery.notify_one();
    let fan_out = start.elapsed();
    let deadline = start + Duration::from_secs(1800);
    // Asked every 10 ms with a cheap probe, so the end is timed to within that.
    while app.store.any_pending(&b.id).await? {
        if Instant::now() > deadline {
            bail!("not finished within 30 minutes: {:?}", app.store.delivery_counts(&b.id).await?);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed();
    let counts = app.store.delivery_counts(&b.id).await?;
    let _ = stop_tx.send(true);
    let _ = worker.await;
    let delivered = counts.get("delivered").copied().unwrap_or(0) as usize;
    let attempts = app.store.attempt_count(&b.id).await?;
    let rate = delivered as f64 / elapsed.as_secs_f64();
    let what = match channel {
        BenchChannel::Email => "personalised emails",
        BenchChannel::Webhook => "signed webhooks",
    };
    println!(
        "broadcast ({kind:?}): {delivered} of {recipients} {what} delivered and recorded in {:.2} s (publishing, which writes the outbox rows, {:.2} s of it): {rate:.0}/s ({:.0} % of the reference); {attempts} attempts on record; states {counts:?}",
        elapsed.as_secs_f64(),
        fan_out.as_secs_f64(),
        100.0 * rate / reference
    );
    if let Some(r) = &receiver {
        println!("receiver accepted {} signed requests", r.accepted() - accepted_before);
    }
    if let Some(mb) = peak_rss_mb() {
        println!("peak memory (whole process, VmHWM): {mb:.0} MB");
    }
    if delivered != recipients {
        bail!("only {delivered} of {recipients} delivered");
    }
    Ok(())
}

/// The worker's webhook channel (reqwest, the SSRF guard, Standard Webhooks signing) sending
/// `n` requests to the receiver, each endpoint's URL once, `conns` at a time, with no store:
/// how much of `wrk`'s rate is left once a request is made the way the worker makes it.
async fn client_alone(app: &App, port: u16, secret: &str, body: &str, n: usize, conns: usize) -> Result<f64> {
    use broadcast_distribute::Channel;
    let channel = Arc::new(app.webhook_channel()?);
    let slots = Arc::new(tokio::sync::Semaphore::new(conns));
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for i in 0..n {
        let permit = slots.clone().acquire_owned().await?;
        let channel = channel.clone();
        let msg = broadcast_distribute::webhook::WebhookMessage {
            id: format!("msg_alone_{i}"),
            url: format!("http://127.0.0.1:{port}/hook/{i}"),
            secrets: vec![secret.to_owned()],
            body: body.to_owned(),
            timestamp: Utc::now().timestamp(),
        };
        tasks.spawn(async move {
            let r = channel.deliver(&msg).await;
            drop(permit);
            r
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r? {
            bail!("the webhook client alone could not deliver: {e}");
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// The size in bytes of one rendered bulletin email (multipart text + HTML), for smtp-source.
async fn sample_email_size(app: &App, bulletin: &broadcast_core::BulletinId) -> Result<usize> {
    let bulletin = app.store.get_bulletin(bulletin.as_str()).await?;
    let ctx = broadcast_distribute::render::EmailContext {
        body_allowed: bulletin.content.tlp.allowed_in_email_body(),
        bulletin_url: app.bulletin_url(&bulletin.reference),
        bulletin,
        organisation: "Bench organisation".into(),
        recipient_name: "Reader 1".into(),
        unsubscribe_url: app.unsubscribe_url("contact_0000000000000000"),
    };
    let r = app.renderer.render_email("bulletin", &ctx)?;
    // Headers and MIME framing add about 1 KB to the two bodies.
    Ok(r.text.len() + r.html.len() + 1024)
}
