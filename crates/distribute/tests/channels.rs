//! Channels against real local servers: a webhook receiver over HTTP and email written by
//! lettre's file transport (SMTP is exercised end to end in `tests/`).

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use broadcast_distribute::email::{EmailChannel, EmailMessage, EmailSettings, TransportKind};
use broadcast_distribute::render::{Renderer, sample_context};
use broadcast_distribute::sign::{secret_from_bytes, verify};
use broadcast_distribute::webhook::{WebhookChannel, WebhookMessage, WebhookSettings};
use broadcast_distribute::{Channel, DeliveryError};
use std::sync::{Arc, Mutex};

type Seen = Arc<Mutex<Vec<(HeaderMap, String)>>>;

async fn receiver(seen: Seen) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s = seen.clone();
    let app = axum::Router::new()
        .route(
            "/ok",
            post(move |h: HeaderMap, body: String| {
                let s = s.clone();
                async move {
                    s.lock().unwrap().push((h, body));
                    "thanks"
                }
            }),
        )
        .route("/busy", post(|| async { (StatusCode::SERVICE_UNAVAILABLE, "later") }))
        .route("/gone", post(|| async { StatusCode::GONE }))
        .route(
            "/throttled",
            post(|| async { (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "7")], "slow down") }),
        )
        .route(
            "/moved",
            post(|| async { (StatusCode::FOUND, [("location", "http://127.0.0.1:9/elsewhere")]) }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn webhooks_are_signed_and_statuses_classified() {
    let seen: Seen = Arc::default();
    let base = receiver(seen.clone()).await;
    // The receiver is on loopback, which the SSRF guard refuses unless allowed.
    let guarded = WebhookChannel::new(&WebhookSettings::default()).unwrap();
    let ch = WebhookChannel::new(&WebhookSettings {
        allow_networks: vec!["127.0.0.0/8".into()],
        ..Default::default()
    })
    .unwrap();
    let secret = secret_from_bytes(&[9; 24]);
    let msg = |path: &str| WebhookMessage {
        id: "dlv_abc".into(),
        url: format!("{base}{path}"),
        secrets: vec![secret.clone()],
        body: r#"{"type":"bulletin.published"}"#.into(),
        timestamp: 1_700_000_000,
    };
    let refused = guarded.deliver(&msg("/ok")).await.unwrap_err();
    assert!(refused.is_permanent());
    assert!(refused.to_string().starts_with("SSRF guard: 127.0.0.1 is a loopback address"), "{refused}");
    // A name is checked as it resolves: localhost is refused too (the dialled address is the checked one).
    let mut by_name = msg("/ok");
    by_name.url = by_name.url.replace("127.0.0.1", "localhost");
    let refused = guarded.deliver(&by_name).await.unwrap_err();
    assert!(refused.is_permanent() && refused.to_string().contains("localhost ("), "{refused}");
    assert!(seen.lock().unwrap().is_empty(), "nothing reached the receiver");
    let r = ch.deliver(&msg("/ok")).await.unwrap();
    assert_eq!(r.detail, "HTTP 200: thanks");
    let (h, body) = seen.lock().unwrap()[0].clone();
    let get = |k: &str| h.get(k).unwrap().to_str().unwrap().to_owned();
    assert_eq!(get("webhook-id"), "dlv_abc");
    assert_eq!(get("webhook-timestamp"), "1700000000");
    assert_eq!(get("content-type"), "application/json");
    verify(&secret, "dlv_abc", 1_700_000_000, body.as_bytes(), &get("webhook-signature"), 1_700_000_000, 300)
        .unwrap();

    assert!(
        matches!(ch.deliver(&msg("/busy")).await, Err(DeliveryError::Transient(d)) if d == "HTTP 503: later")
    );
    // During a secret rotation both secrets sign: a receiver holding either one accepts it.
    let old = secret_from_bytes(&[3; 24]);
    let mut rotated = msg("/ok");
    rotated.secrets = vec![secret.clone(), old.clone()];
    ch.deliver(&rotated).await.unwrap();
    let (h, body) = seen.lock().unwrap().last().unwrap().clone();
    let sig = h.get("webhook-signature").unwrap().to_str().unwrap().to_owned();
    assert_eq!(sig.matches("v1,").count(), 2, "{sig}");
    for s in [&secret, &old] {
        verify(s, "dlv_abc", 1_700_000_000, body.as_bytes(), &sig, 1_700_000_000, 300).unwrap();
    }
    seen.lock().unwrap().pop();
    // With an ed25519 signing key configured, a v1a signature rides along, checked with the
    // public key alone.
    let key = broadcast_distribute::sign::AsymmetricKey::generate(&[5; 32]);
    let public = broadcast_distribute::sign::AsymmetricKey::parse(&key).unwrap().public_key();
    let both = WebhookChannel::new(&WebhookSettings {
        allow_networks: vec!["127.0.0.0/8".into()],
        signing_key: Some(key),
        ..Default::default()
    })
    .unwrap();
    both.deliver(&msg("/ok")).await.unwrap();
    let (h, body) = seen.lock().unwrap().pop().unwrap();
    let sig = h.get("webhook-signature").unwrap().to_str().unwrap().to_owned();
    assert!(sig.starts_with("v1,") && sig.contains(" v1a,"), "{sig}");
    broadcast_distribute::sign::verify_asymmetric(
        &public,
        "dlv_abc",
        1_700_000_000,
        body.as_bytes(),
        &sig,
        1_700_000_000,
        300,
    )
    .unwrap();
    verify(&secret, "dlv_abc", 1_700_000_000, body.as_bytes(), &sig, 1_700_000_000, 300).unwrap();
    assert!(
        WebhookChannel::new(&WebhookSettings {
            signing_key: Some("whsk_short".into()),
            ..Default::default()
        })
        .is_err_and(|e| e.contains("webhook.signing_key")),
        "a bad key is refused at start-up, naming the setting"
    );
    assert!(
        matches!(ch.deliver(&msg("/gone")).await, Err(DeliveryError::Gone(d)) if d.starts_with("HTTP 410"))
    );
    assert!(matches!(
        ch.deliver(&msg("/throttled")).await,
        Err(DeliveryError::Throttled { detail, retry_after }) if detail == "HTTP 429: slow down" && retry_after.as_secs() == 7
    ));
    // Redirects are not followed.
    assert!(
        matches!(ch.deliver(&msg("/moved")).await, Err(DeliveryError::Permanent(d)) if d.starts_with("HTTP 302"))
    );
    // Nothing listening: transient.
    let mut dead = msg("/ok");
    dead.url = "http://127.0.0.1:9/hook".into();
    assert!(matches!(ch.deliver(&dead).await, Err(DeliveryError::Transient(_))));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn email_has_list_headers_and_both_parts() {
    let dir = tempfile::tempdir().unwrap();
    let settings = EmailSettings {
        from: "NHS Broadcast <bulletins@broadcast.example>".into(),
        list_id: "bulletins.broadcast.example".into(),
        transport: TransportKind::File,
        smtp: None,
        file_dir: Some(dir.path().display().to_string()),
        dkim: None,
    };
    let ch = EmailChannel::new(&settings).unwrap();
    let renderer =
        Renderer::from_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../bulletin-templates")).unwrap();
    let rendered = renderer.render_email("bulletin", &sample_context(false)).unwrap();
    let m = EmailMessage {
        delivery_id: "dlv_123".into(),
        to: "soc@trust.nhs.uk".into(),
        to_name: "SOC".into(),
        rendered,
        unsubscribe_url: "https://broadcast.example/unsubscribe?token=t1".into(),
    };
    ch.deliver(&m).await.unwrap();
    let file = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
    let raw = std::fs::read_to_string(file).unwrap();
    for header in [
        "Message-ID: <dlv_123@broadcast.example>",
        "List-Id: <bulletins.broadcast.example>",
        "List-Unsubscribe: <https://broadcast.example/unsubscribe?token=t1>",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        "To: SOC <soc@trust.nhs.uk>",
        "Content-Type: multipart/alternative",
        "Content-Type: text/plain",
        "Content-Type: text/html",
    ] {
        assert!(raw.contains(header), "missing {header} in\n{raw}");
    }
    let bad = EmailMessage { to: "not an address".into(), ..m };
    assert!(
        matches!(ch.deliver(&bad).await, Err(DeliveryError::Permanent(e)) if e.contains("not an address"))
    );
    let err = EmailChannel::new(&EmailSettings { from: "nobody".into(), ..settings }).err().unwrap();
    assert!(err.to_string().starts_with("email.from:"), "{err}");
}

#[test]
fn dkim_settings_are_checked_with_a_clear_error() {
    use broadcast_distribute::email::{DkimAlgorithm, DkimSettings, check_dkim};
    let ed = DkimSettings {
        selector: "bc2026".into(),
        domain: None,
        algorithm: DkimAlgorithm::Ed25519,
        private_key: Some("CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=".into()),
        private_key_file: None,
    };
    check_dkim(&ed).unwrap();
    let err =
        check_dkim(&DkimSettings { algorithm: DkimAlgorithm::Rsa, ..ed.clone() }).unwrap_err().to_string();
    assert!(err.starts_with("email.dkim: the private key is not a PKCS#1 PEM RSA key"), "{err}");
    let err = check_dkim(&DkimSettings { private_key_file: Some("/nowhere.pem".into()), ..ed.clone() })
        .unwrap_err()
        .to_string();
    assert!(err.contains("exactly one of private_key and private_key_file"), "{err}");
    let err =
        check_dkim(&DkimSettings { private_key: None, private_key_file: Some("/nowhere.pem".into()), ..ed })
            .unwrap_err()
            .to_string();
    assert!(err.contains("cannot read private_key_file `/nowhere.pem`"), "{err}");
}
