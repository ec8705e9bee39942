//! Delivery isolation with the real worker and real HTTP receivers: a host that hangs never
//! delays deliveries to healthy hosts, and never gets more requests at once than its cap.

use axum::http::StatusCode;
use axum::routing::post;
use broadcast_core::{Action, BulletinContent, DeliveryState, Role, ThreatLevel, Tlp};
use broadcast_server::config::Settings;
use chrono::Utc;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A receiver on `ip` answering 204 after `delay`, counting requests in flight.
async fn receiver(
    ip: &str,
    delay: Duration,
    in_flight: Arc<AtomicUsize>,
    max_seen: Arc<AtomicUsize>,
) -> String {
    let app = axum::Router::new().route(
        "/hook/{n}",
        post(move || {
            let (in_flight, max_seen) = (in_flight.clone(), max_seen.clone());
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                max_seen.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let l = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_host_does_not_delay_healthy_ones() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (fast_now, fast_max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (slow_now, slow_max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let healthy = receiver("127.0.0.1", Duration::ZERO, fast_now, fast_max).await;
    // A receiver that takes 30 s to answer: if it blocked the others, they would not be done
    // within the 20 s this test waits.
    let hanging = receiver("127.0.0.2", Duration::from_secs(30), slow_now.clone(), slow_max.clone()).await;

    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::load(None).unwrap();
    s.store.url = format!("sqlite://{}", dir.path().join("b.db").display());
    s.triage.watchlist_file = repo().join("config/watchlist.toml").display().to_string();
    s.bulletins.templates_dir = repo().join("bulletin-templates").display().to_string();
    s.security.link_secret = "x".repeat(40);
    s.webhook.allow_networks = vec!["127.0.0.0/8".into()];
    s.webhook.timeout_secs = 60;
    s.delivery.concurrency = 8;
    s.delivery.per_host_concurrency = 2;
    s.delivery.per_endpoint_concurrency = 1;
    s.delivery.poll_interval_ms = 200;
    let app = broadcast_server::app::App::open(s).await.unwrap();
    let st = &app.store;
    let now = Utc::now();
    let org = st.create_organisation("Trust", Tlp::Clear, ThreatLevel::Information, now).await.unwrap();
    // More hanging endpoints than worker slots: without per-host caps they would fill every slot.
    for n in 0..12 {
        st.add_endpoint(org.id.as_str(), &format!("{hanging}/hook/{n}"), "whsec_c2VjcmV0", now)
            .await
            .unwrap();
    }
    for n in 0..20 {
        st.add_endpoint(org.id.as_str(), &format!("{healthy}/hook/{n}"), "whsec_c2VjcmV0", now)
            .await
            .unwrap();
    }
    let alice = st.create_analyst("alice", Role::Analyst, "a", now).await.unwrap();
    let bob = st.create_analyst("bob", Role::Approver, "b", now).await.unwrap();
    let content = BulletinContent::new("Isolation", ThreatLevel::High, Tlp::Clear);
    let b = st.create_bulletin(&content, &[], &alice.id, "HCB", now).await.unwrap();
    for (who, action) in [(&alice, Action::Submit), (&bob, Action::Approve), (&alice, Action::Publish)] {
        st.transition_bulletin(b.id.as_str(), action, &who.id, None, None, now).await.unwrap();
    }

    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(broadcast_server::stages::delivery::run(app.clone(), stop_rx));

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = st.deliveries_for_bulletin(&b.id).await.unwrap();
        let healthy_done = rows
            .iter()
            .filter(|d| d.address.starts_with(&healthy) && d.state == DeliveryState::Delivered)
            .count();
        if healthy_done == 20 {
            let slow_delivered = rows
                .iter()
                .filter(|d| d.address.starts_with(&hanging) && d.state == DeliveryState::Delivered)
                .count();
            assert_eq!(slow_delivered, 0, "the hanging host cannot have answered yet");
            assert!(
                rows.iter()
                    .filter(|d| d.address.starts_with(&hanging))
                    .all(|d| d.state == DeliveryState::Pending)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "healthy endpoints were held up by the hanging host: {healthy_done}/20 delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(slow_now.load(Ordering::SeqCst) >= 1, "the hanging host is being tried");
    assert!(
        slow_max.load(Ordering::SeqCst) <= 2,
        "per-host cap: at most 2 requests at once, saw {}",
        slow_max.load(Ordering::SeqCst)
    );
}
