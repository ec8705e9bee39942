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
use broadcast_core::{Action, BulletinContent, Role, ThreatLevel, Tlp};
use chrono::Utc;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub async fn latency(mut settings: Settings, bulletins: usize, store_url: Option<String>) -> Result<()> {
    let dir = tempfile::tempdir()?;
    settings.store.url =
        store_url.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    settings.webhook.allow_networks = vec!["127.0.0.0/8".into()];
    settings.delivery.poll_interval_ms = 1000;
    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let secret = broadcast_distribute::sign::secret_from_bytes(&crate::auth::random_secret_bytes());
    let (seen, key) = (arrivals.clone(), secret.clone());
    let receiver = axum::Router::new().route(
        "/hook",
        post(move |h: axum::http::HeaderMap, body: String| {
            let (seen, key) = (seen.clone(), key.clone());
            async move {
                let at = Instant::now();
                let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                let ts: i64 = get("webhook-timestamp").parse().unwrap_or(0);
                let ok = broadcast_distribute::sign::verify(
                    &key,
                    &get("webhook-id"),
                    ts,
                    body.as_bytes(),
                    &get("webhook-signature"),
                    Utc::now().timestamp(),
                    300,
                )
                .is_ok();
                if !ok {
                    return axum::http::StatusCode::UNAUTHORIZED;
                }
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                if let Some(id) = v["data"]["id"].as_str() {
                    seen.lock().expect("lock").entry(id.to_owned()).or_insert(at);
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, receiver).await });

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
    let tag = now.timestamp_millis();
    let alice = app
        .store
        .create_analyst(&format!("bench-a-{tag}"), Role::Analyst, &format!("bench-a-{tag}"), now)
        .await?;
    let bob = app
        .store
        .create_analyst(&format!("bench-b-{tag}"), Role::Approver, &format!("bench-b-{tag}"), now)
        .await?;
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
            if let Some(at) = arrivals.lock().expect("lock").get(b.id.as_str()) {
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
