//! The store conformance suite: every test here runs once on SQLite and once on PostgreSQL.
//!
//! PostgreSQL is the server at `BROADCAST_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); each test creates its own database and
//! drops it when it passes. A missing server fails the PostgreSQL half loudly.

use broadcast_core::*;
use broadcast_store::*;
use chrono::{DateTime, Duration, TimeZone, Utc};
use std::future::Future;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 4, 10, 0, 0).unwrap()
}

fn advisory(ext: &str, title: &str) -> AdvisoryContent {
    let mut a = AdvisoryContent::new("feed-a", ext, title);
    a.summary = "Summary".into();
    a.cves = vec!["CVE-2026-0001".into()];
    a.cvss = Some(Cvss { vector: None, score: 9.8 });
    a
}

fn content(title: &str, tlp: Tlp, level: ThreatLevel) -> BulletinContent {
    BulletinContent {
        title: title.into(),
        threat_level: level,
        tlp,
        summary: "s".into(),
        affected_products: vec!["Widget 1.0".into()],
        remediation: "Patch".into(),
        references: vec!["https://example.org/a".into()],
        cves: vec!["CVE-2026-0001".into()],
    }
}

pub struct PgGuard {
    admin_url: String,
    name: String,
}

async fn with_sqlite<F, Fut>(test: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    with_sqlite_url(|s, _| test(s)).await
}

async fn with_postgres<F, Fut>(test: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    with_postgres_url(|s, _| test(s)).await
}

async fn with_sqlite_url<F, Fut>(test: F)
where
    F: FnOnce(Store, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    // Migrations are idempotent.
    store.migrate().await.unwrap();
    test(store, url).await;
}

async fn with_postgres_url<F, Fut>(test: F)
where
    F: FnOnce(Store, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let admin_url = std::env::var("BROADCAST_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("bc_conf_{}", uuid_like());
    let admin = sqlx::PgPool::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} is needed for the conformance suite: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
    let guard = PgGuard { admin_url: admin_url.clone(), name: name.clone() };
    let url = db_url(&admin_url, &name);
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    test(store.clone(), url).await;
    store.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {} WITH (FORCE)", guard.name)))
        .execute(&admin)
        .await
        .unwrap();
    let _ = guard.admin_url;
}

fn db_url(admin_url: &str, name: &str) -> String {
    let base = admin_url.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin_url);
    format!("{base}/{name}")
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{}_{}", std::process::id(), n % 1_000_000_000_000)
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::with_sqlite(super::$name).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::with_postgres(super::$name).await } )*
        }
    };
}

conformance!(
    first_attempts_are_claimed_before_retries,
    advisories_dedupe_and_revise,
    triage_queue_and_candidates,
    bulletin_lifecycle_and_four_eyes,
    publish_fans_out_in_one_transaction,
    concurrent_approvals_only_one_wins,
    outbox_leases_and_attempts,
    concurrent_workers_claim_disjoint_rows,
    withdraw_cancels_pending,
    bad_input_is_refused_and_nothing_stored,
    feed_state_tracks_health,
    overrides_apply_to_their_revision_and_are_audited,
    disabling_and_replaying,
    interests_target_organisations,
    hard_bounces_count_within_thirty_days,
    endpoint_failure_streaks,
    batch_reads_and_recording,
    digests_hold_emails_not_webhooks,
    passwords_and_sessions,
    kev_marks_advisories_now_and_later,
    one_node_runs_a_feed_at_a_time,
    one_advisory_per_real_issue,
    disable_notices_are_owed_until_sent,
);

/// Broadcast's own disabling owes the organisation a notice, in the same transaction; it stays
/// owed (retry time) until sent; an admin's disabling owes none, and enabling cancels one.
async fn disable_notices_are_owed_until_sent(s: Store) {
    let org = s
        .create_organisation_by("usr_admin", "Trust", Tlp::Clear, ThreatLevel::Information, t0())
        .await
        .unwrap();
    let a = s
        .add_endpoint_by(
            "usr_admin",
            org.id.as_str(),
            "https://a.example/hook",
            "whsec_eA==",
            EndpointFormat::Broadcast,
            t0(),
        )
        .await
        .unwrap();
    // Creations are audited with who made them, without the endpoint's secret.
    let log = s.audit_entries(0, 100).await.unwrap();
    let made: Vec<(&str, &str)> = log.iter().map(|e| (e.action.as_str(), e.actor.as_str())).collect();
    assert_eq!(made, [("organisation.create", "usr_admin"), ("endpoint.create", "usr_admin")]);
    assert!(!log[1].details.contains("whsec_"), "{}", log[1].details);
    let b = s.add_endpoint(org.id.as_str(), "https://b.example/hook", "whsec_eA==", t0()).await.unwrap();
    assert!(s.due_disable_notices(t0()).await.unwrap().is_empty());
    assert!(s.disable_failing_endpoint(&a.id, "failing for 5 days", t0()).await.unwrap());
    s.set_endpoint_enabled(&b.id, false, "usr_admin", "moved", t0()).await.unwrap();
    let due = s.due_disable_notices(t0()).await.unwrap();
    assert_eq!(due.len(), 1, "only the system's disabling owes a notice");
    assert_eq!((due[0].0.id.clone(), due[0].1.as_str()), (a.id.clone(), "failing for 5 days"));
    // Not sent (SMTP down): owed again in 5 minutes, not before.
    s.disable_notice_done(&a.id, Some(t0() + Duration::minutes(5))).await.unwrap();
    assert!(s.due_disable_notices(t0() + Duration::minutes(4)).await.unwrap().is_empty());
    assert_eq!(s.due_disable_notices(t0() + Duration::minutes(5)).await.unwrap().len(), 1);
    s.disable_notice_done(&a.id, None).await.unwrap();
    assert!(s.due_disable_notices(t0() + Duration::days(1)).await.unwrap().is_empty(), "sent: nothing owed");
    // Disabled again and enabled before the notice went out: nothing owed.
    s.set_endpoint_enabled(&a.id, true, "usr_admin", "fixed", t0()).await.unwrap();
    assert!(s.disable_failing_endpoint(&a.id, "failing again", t0()).await.unwrap());
    s.set_endpoint_enabled(&a.id, true, "usr_admin", "fixed", t0()).await.unwrap();
    assert!(s.due_disable_notices(t0() + Duration::days(1)).await.unwrap().is_empty());
}

/// The store's half of one advisory per issue: records whose identity keys meet join one
/// issue, a record whose keys meet two issues merges them, and a record without keys stays
/// on its own. (Which keys a record has is triage's rule, tested there and end to end in
/// the server's tests.)
async fn one_advisory_per_real_issue(s: Store) {
    let members = |id: AdvisoryId| {
        let s = s.clone();
        async move {
            let mut m: Vec<String> =
                s.issue_members(&id).await.unwrap().into_iter().map(|a| a.content.source).collect();
            m.sort();
            m
        }
    };
    let put = |source: &'static str, ext: &'static str, keys: &'static [&'static str]| {
        let s = s.clone();
        async move {
            let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            s.upsert_advisory_keyed(&AdvisoryContent::new(source, ext, ext), &keys, t0()).await.unwrap()
        }
    };
    let csaf = put("csaf", "ICSMA-24-200-01", &["ICSMA-24-200-01", "CVE-2024-0001"]).await;
    put("rss", "ICSMA-24-200-01", &["ICSMA-24-200-01", "CVE-2024-0001"]).await;
    put("nvd", "CVE-2024-0001", &["CVE-2024-0001"]).await;
    assert_eq!(members(csaf.id.clone()).await, ["csaf", "nvd", "rss"]);
    let lone = put("vendor", "https://v.example/1", &[]).await;
    assert_eq!(members(lone.id.clone()).await, ["vendor"]);
    // Two issues until a record's keys meet both: then one.
    let ghsa = put("osv", "GHSA-abcd-1234-wxyz", &["GHSA-ABCD-1234-WXYZ"]).await;
    let n5 = put("nvd", "CVE-2024-0005", &["CVE-2024-0005"]).await;
    assert_eq!(members(ghsa.id.clone()).await, ["osv"]);
    put("vendor-c", "https://c.example/1", &["GHSA-ABCD-1234-WXYZ", "CVE-2024-0005"]).await;
    assert_eq!(members(n5.id.clone()).await, ["nvd", "osv", "vendor-c"]);
    let map = s.issue_ids(&[ghsa.id.clone(), n5.id.clone(), csaf.id.clone()]).await.unwrap();
    assert_eq!(map[ghsa.id.as_str()], map[n5.id.as_str()]);
    assert_ne!(map[ghsa.id.as_str()], map[csaf.id.as_str()]);
    // Without keys (`upsert_advisory`) a revision keeps the issue the record is in.
    let mut revised = AdvisoryContent::new("rss", "ICSMA-24-200-01", "ICSMA-24-200-01");
    revised.summary = "updated".into();
    let r = s.upsert_advisory(&revised, t0()).await.unwrap();
    assert_eq!(members(r.id).await, ["csaf", "nvd", "rss"]);
}

/// Feed leases: one holder at a time; its own renewal works; another node takes over only
/// once the lease has run out; releasing frees it at once.
async fn one_node_runs_a_feed_at_a_time(s: Store) {
    let ttl = Duration::minutes(3);
    assert!(s.lease_feed("nvd", "node-a", t0(), t0() + ttl).await.unwrap());
    assert!(
        !s.lease_feed("nvd", "node-b", t0() + Duration::minutes(1), t0() + Duration::minutes(4))
            .await
            .unwrap()
    );
    assert!(s.lease_feed("kev", "node-b", t0(), t0() + ttl).await.unwrap(), "other feeds are free");
    // node-a renews while it runs.
    assert!(
        s.lease_feed("nvd", "node-a", t0() + Duration::minutes(2), t0() + Duration::minutes(5))
            .await
            .unwrap()
    );
    assert!(
        !s.lease_feed("nvd", "node-b", t0() + Duration::minutes(4), t0() + Duration::minutes(7))
            .await
            .unwrap()
    );
    // node-a dies: after its lease runs out node-b takes over, and node-a's late renewal fails.
    assert!(
        s.lease_feed("nvd", "node-b", t0() + Duration::minutes(6), t0() + Duration::minutes(9))
            .await
            .unwrap()
    );
    assert!(
        !s.lease_feed("nvd", "node-a", t0() + Duration::minutes(7), t0() + Duration::minutes(10))
            .await
            .unwrap()
    );
    // Releasing someone else's lease does nothing; one's own frees it.
    s.release_feed("nvd", "node-a").await.unwrap();
    assert!(
        !s.lease_feed("nvd", "node-c", t0() + Duration::minutes(7), t0() + Duration::minutes(10))
            .await
            .unwrap()
    );
    s.release_feed("nvd", "node-b").await.unwrap();
    assert!(
        s.lease_feed("nvd", "node-c", t0() + Duration::minutes(7), t0() + Duration::minutes(10))
            .await
            .unwrap()
    );
}

fn kev(cve: &str, added: (i32, u32, u32), due: Option<(i32, u32, u32)>) -> broadcast_core::KevEntry {
    let d = |(y, m, day): (i32, u32, u32)| chrono::NaiveDate::from_ymd_opt(y, m, day).unwrap();
    broadcast_core::KevEntry {
        cve: cve.into(),
        listing: broadcast_core::KevListing { date_added: d(added), due_date: due.map(d), ransomware: false },
        vendor: "Acme".into(),
        product: "Pump".into(),
        name: "Acme Pump RCE".into(),
    }
}

/// A CVE added to KEV marks every advisory naming it (a new revision, so triage assesses it
/// again); the catalog applied again changes nothing; a moved due date is a change; a listing
/// for a CVE nobody reported yet waits and marks the advisory when it arrives.
async fn kev_marks_advisories_now_and_later(s: Store) {
    let mut a = advisory("a-1", "Acme pump flaw");
    a.cves = vec!["CVE-2026-1111".into()];
    let mut b = AdvisoryContent::new("feed-b", "b-1", "Acme pump flaw (vendor notice)");
    b.cves = vec!["CVE-2026-1111".into(), "CVE-2026-2222".into()];
    let mut other = advisory("o-1", "Unrelated");
    other.cves = vec!["CVE-2026-9999".into()];
    let ua = s.upsert_advisory(&a, t0()).await.unwrap();
    let ub = s.upsert_advisory(&b, t0()).await.unwrap();
    let uo = s.upsert_advisory(&other, t0()).await.unwrap();

    let first = kev("CVE-2026-1111", (2026, 1, 5), Some((2026, 1, 26)));
    let applied = s.apply_kev(std::slice::from_ref(&first), t0() + Duration::hours(1)).await.unwrap();
    assert_eq!((applied.new_entries, applied.changed_entries), (1, 0));
    let mut marked = applied.advisories.clone();
    marked.sort();
    let mut expected = vec![ua.id.clone(), ub.id.clone()];
    expected.sort();
    assert_eq!(marked, expected, "both sources' records of the CVE are marked");
    let got = s.get_advisory(&ua.id).await.unwrap();
    assert_eq!((got.revision, got.content.kev.as_ref()), (2, Some(&first.listing)));
    assert_eq!(s.get_advisory(&uo.id).await.unwrap().revision, 1, "other CVEs untouched");
    let revs = s.advisory_revisions(&ua.id).await.unwrap();
    assert!(revs[0].content.kev.is_none() && revs[1].content.kev.is_some(), "the change is a revision");

    // The whole catalog again: nothing new, nothing revised.
    let again = s.apply_kev(std::slice::from_ref(&first), t0() + Duration::hours(2)).await.unwrap();
    assert_eq!(again, broadcast_store::KevApplied::default());
    // The feed re-reports the advisory without KEV: the stored listing stays, no new revision.
    assert_eq!(s.upsert_advisory(&a, t0() + Duration::hours(2)).await.unwrap().change, Change::Unchanged);

    // CISA moves the due date.
    let moved = kev("CVE-2026-1111", (2026, 1, 5), Some((2026, 2, 2)));
    let changed = s.apply_kev(std::slice::from_ref(&moved), t0() + Duration::hours(3)).await.unwrap();
    assert_eq!((changed.new_entries, changed.changed_entries, changed.advisories.len()), (0, 1, 2));
    assert_eq!(s.get_advisory(&ua.id).await.unwrap().content.kev.unwrap().due_date, moved.listing.due_date);

    // Listed before anyone reports it: the advisory arrives marked.
    let early = kev("CVE-2026-3333", (2026, 1, 7), None);
    let waiting = s.apply_kev(std::slice::from_ref(&early), t0() + Duration::hours(4)).await.unwrap();
    assert_eq!((waiting.new_entries, waiting.advisories.len()), (1, 0));
    let mut late = AdvisoryContent::new("feed-b", "b-2", "Later notice");
    late.cves = vec!["CVE-2026-3333".into()];
    let ul = s.upsert_advisory(&late, t0() + Duration::hours(5)).await.unwrap();
    let got = s.get_advisory(&ul.id).await.unwrap();
    assert_eq!((got.revision, got.content.kev), (1, Some(early.listing.clone())));
    // A revision that adds a listed CVE to an advisory picks the listing up too.
    let mut other2 = other.clone();
    other2.cves.push("CVE-2026-3333".into());
    let uo2 = s.upsert_advisory(&other2, t0() + Duration::hours(6)).await.unwrap();
    assert_eq!(uo2.change, Change::Revised);
    assert_eq!(s.get_advisory(&uo.id).await.unwrap().content.kev, Some(early.listing));
    // …and is found by the next listing of that CVE.
    let relisted = kev("CVE-2026-9999", (2026, 1, 1), None);
    let r = s.apply_kev(std::slice::from_ref(&relisted), t0() + Duration::hours(7)).await.unwrap();
    assert_eq!(r.advisories, vec![uo.id.clone()], "earlier listing date wins for an advisory");
    assert_eq!(s.get_advisory(&uo.id).await.unwrap().content.kev, Some(relisted.listing));
}

/// Console accounts: a password hash per analyst, sessions found by their hash until they
/// expire, ended by signing out or by a new password; every change audited without secrets.
async fn passwords_and_sessions(s: Store) {
    let (alice, _, _) = setup_people(&s).await;
    assert_eq!(s.analyst_credentials("alice").await.unwrap().unwrap().1, None, "no password yet");
    assert!(s.analyst_credentials("nobody").await.unwrap().is_none());
    s.set_analyst_password("alice", Some("$argon2id$fake"), "usr_admin", t0()).await.unwrap();
    let (a, hash) = s.analyst_credentials("alice").await.unwrap().unwrap();
    assert_eq!((a.id.clone(), hash.as_deref()), (alice.id.clone(), Some("$argon2id$fake")));
    let err = s.set_analyst_password("nobody", Some("x"), "usr_admin", t0()).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");

    let expires = t0() + Duration::hours(12);
    s.create_session("sess-1", &alice.id, "csrf-1", t0(), expires).await.unwrap();
    s.create_session("sess-2", &alice.id, "csrf-2", t0(), expires).await.unwrap();
    let (who, csrf) = s.session("sess-1", t0() + Duration::hours(1)).await.unwrap().unwrap();
    assert_eq!((who.name.as_str(), csrf.as_str()), ("alice", "csrf-1"));
    assert!(s.session("sess-1", expires + Duration::seconds(1)).await.unwrap().is_none(), "expired");
    assert!(s.session("unknown", t0()).await.unwrap().is_none());
    s.delete_session("sess-1").await.unwrap();
    assert!(s.session("sess-1", t0()).await.unwrap().is_none(), "signed out");
    assert!(s.session("sess-2", t0()).await.unwrap().is_some(), "other sessions stay");
    // A new password ends every session.
    s.set_analyst_password("alice", Some("$argon2id$new"), "usr_admin", t0()).await.unwrap();
    assert!(s.session("sess-2", t0()).await.unwrap().is_none());

    let log = s.audit_entries(0, 100).await.unwrap();
    let pw: Vec<&AuditEntry> = log.iter().filter(|e| e.action == "user.password").collect();
    assert_eq!(pw.len(), 2);
    assert!(!pw[0].details.contains("argon2"), "the hash is not in the log: {}", pw[0].details);
    assert_eq!(s.verify_audit().await.unwrap().broken, None);
}

/// An organisation on a daily digest: its emails wait for the next digest hour (webhooks do
/// not), and one claim takes every pending email of a contact's digest.
async fn digests_hold_emails_not_webhooks(s: Store) {
    let (alice, bob, _) = setup_people(&s).await;
    let org = s.create_organisation("Trust", Tlp::Clear, ThreatLevel::Information, t0()).await.unwrap();
    let err = s.set_organisation_digest("Trust", Some(24), "usr_admin", t0()).await.unwrap_err();
    assert!(err.to_string().contains("24 is not an hour of the day"), "{err}");
    let org2 = s.set_organisation_digest("Trust", Some(7), "usr_admin", t0()).await.unwrap();
    assert_eq!(org2.digest_hour, Some(7));
    let c = s.add_contact(org.id.as_str(), "duty@trust.example", "", t0()).await.unwrap();
    s.add_endpoint(org.id.as_str(), "https://soc.trust.example/hook", "whsec_eA==", t0()).await.unwrap();
    let mut bulletins = Vec::new();
    for title in ["One", "Two"] {
        bulletins.push(publish(&s, &content(title, Tlp::Clear, ThreatLevel::High), &alice, &bob).await);
    }
    let digest_at = org2.next_digest_after(t0()).unwrap();
    for b in &bulletins {
        for d in s.deliveries_for_bulletin(&b.id).await.unwrap() {
            match d.channel {
                broadcast_core::ChannelKind::Email => {
                    assert_eq!((d.digest_at, d.next_attempt_at), (Some(digest_at), digest_at), "{d:?}")
                }
                broadcast_core::ChannelKind::Webhook => assert_eq!(d.digest_at, None, "{d:?}"),
            }
        }
    }
    // Not due before the digest hour; then one claim takes both emails.
    let due = s.claim_due_deliveries("w1", t0(), std::time::Duration::from_secs(60), 10).await.unwrap();
    assert!(due.iter().all(|d| d.digest_at.is_none()), "{due:?}");
    let group = s
        .claim_digest("w1", c.id.as_str(), digest_at, digest_at, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(group.len(), 2);
    let again = s
        .claim_digest("w2", c.id.as_str(), digest_at, digest_at, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert!(again.is_empty(), "another worker cannot take a digest being sent");
    s.set_organisation_digest("Trust", None, "usr_admin", t0()).await.unwrap();
    let actions: Vec<String> = s.audit_entries(0, 100).await.unwrap().into_iter().map(|a| a.action).collect();
    assert_eq!(actions.iter().filter(|a| *a == "organisation.digest").count(), 2, "{actions:?}");
}

/// A failing endpoint's streak: counted, kept from its first failure, reset by a success or
/// by enabling; warned once; disabled once (the second call reports it was already done).
async fn endpoint_failure_streaks(s: Store) {
    let (alice, bob, _) = setup_people(&s).await;
    let org = s.create_organisation("Trust", Tlp::Clear, ThreatLevel::Information, t0()).await.unwrap();
    let ep =
        s.add_endpoint(org.id.as_str(), "https://soc.trust.example/hook", "whsec_eA==", t0()).await.unwrap();
    let t1 = t0() + chrono::Duration::minutes(1);
    let e = s.note_endpoint_result(&ep.id, false, t0()).await.unwrap();
    assert_eq!((e.consecutive_failures, e.failing_since), (1, Some(t0())));
    let e = s.note_endpoint_result(&ep.id, false, t1).await.unwrap();
    assert_eq!((e.consecutive_failures, e.failing_since), (2, Some(t0())), "the streak keeps its start");
    assert!(s.mark_endpoint_warned(&ep.id, "HTTP 500", t1).await.unwrap());
    assert!(!s.mark_endpoint_warned(&ep.id, "HTTP 500", t1).await.unwrap(), "warned once");
    let e = s.note_endpoint_result(&ep.id, true, t1).await.unwrap();
    assert_eq!((e.consecutive_failures, e.failing_since, e.failure_warned_at), (0, None, None));

    let b = publish(&s, &content("One", Tlp::Clear, ThreatLevel::High), &alice, &bob).await;
    s.note_endpoint_result(&ep.id, false, t1).await.unwrap();
    assert!(s.disable_failing_endpoint(&ep.id, "failing for 5 days", t1).await.unwrap());
    assert!(!s.disable_failing_endpoint(&ep.id, "failing for 5 days", t1).await.unwrap(), "only once");
    let d = s.deliveries_for_bulletin(&b.id).await.unwrap().remove(0);
    assert_eq!(d.state, DeliveryState::Suppressed);
    assert_eq!(d.reason.as_deref(), Some("endpoint disabled: failing for 5 days"));
    let e = s.set_endpoint_enabled(&ep.id, true, "usr_admin", "fixed", t1).await.unwrap();
    assert!(e.enabled);
    assert_eq!((e.consecutive_failures, e.failing_since), (0, None), "enabling starts afresh");
    let actions: Vec<String> = s.audit_entries(0, 100).await.unwrap().into_iter().map(|a| a.action).collect();
    assert!(actions.iter().any(|a| a == "endpoint.warn"), "{actions:?}");
}

/// The worker's batch paths: many recipients read at once (missing ids simply absent), and
/// many attempts recorded in one transaction, each with its own result.
async fn batch_reads_and_recording(s: Store) {
    let (alice, bob, _) = setup_people(&s).await;
    let org = s.create_organisation("Trust", Tlp::Clear, ThreatLevel::Information, t0()).await.unwrap();
    let mut contacts = Vec::new();
    for n in 0..3 {
        contacts
            .push(s.add_contact(org.id.as_str(), &format!("r{n}@trust.example"), "", t0()).await.unwrap().id);
    }
    let mut ids = contacts.clone();
    ids.push(broadcast_core::ContactId::from_suffix("missing"));
    let got = s.get_contacts(&ids).await.unwrap();
    assert_eq!(got.len(), 3);
    assert!(s.get_contacts(&[]).await.unwrap().is_empty());
    let ep =
        s.add_endpoint(org.id.as_str(), "https://soc.trust.example/hook", "whsec_eA==", t0()).await.unwrap();
    assert_eq!(
        s.get_endpoints(std::slice::from_ref(&ep.id)).await.unwrap()[0].url,
        "https://soc.trust.example/hook"
    );

    let b = publish(&s, &content("One", Tlp::Clear, ThreatLevel::High), &alice, &bob).await;
    let rows = s.deliveries_for_bulletin(&b.id).await.unwrap();
    assert_eq!(rows.len(), 4);
    let rec = |outcome| AttemptRecord { started_at: t0(), duration_ms: 2, outcome, detail: "250 ok".into() };
    let mut batch: Vec<(broadcast_core::DeliveryId, AttemptRecord)> =
        rows.iter().map(|d| (d.id.clone(), rec(AttemptOutcome::Delivered))).collect();
    batch[0].1 =
        rec(AttemptOutcome::Retry { at: t0() + chrono::Duration::seconds(5), error: "421 busy".into() });
    batch.push((broadcast_core::DeliveryId::from_suffix("missing"), rec(AttemptOutcome::Delivered)));
    let results = s.record_attempts(&batch).await.unwrap();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 4);
    assert!(results[4].as_ref().is_err_and(|e| e.to_string().contains("missing")), "{:?}", results[4]);
    let counts = s.delivery_counts(&b.id).await.unwrap();
    assert_eq!((counts["delivered"], counts["pending"]), (3, 1));
    assert_eq!(s.attempt_count(&b.id).await.unwrap(), 4);
    let retried = s.get_delivery(&batch[0].0).await.unwrap();
    assert_eq!((retried.attempts, retried.reason.as_deref()), (1, Some("421 busy")));
    // The same delivery twice in one batch: both attempts on record, numbered in order, and
    // a delivered row stays delivered.
    let twice = vec![(rows[1].id.clone(), rec(AttemptOutcome::Delivered)); 2];
    assert!(s.record_attempts(&twice).await.unwrap().iter().all(|r| r.is_ok()));
    let numbers: Vec<i32> =
        s.delivery_attempts(&rows[1].id).await.unwrap().iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, vec![1, 2, 3]);
    assert_eq!(s.delivery_counts(&b.id).await.unwrap()["delivered"], 3);
    // The cheap "anything left?" probe agrees with the counts.
    assert!(s.any_pending(&b.id).await.unwrap(), "the retried row is pending");
    let done = vec![(batch[0].0.clone(), rec(AttemptOutcome::Delivered))];
    assert!(s.record_attempts(&done).await.unwrap()[0].is_ok());
    assert!(!s.any_pending(&b.id).await.unwrap(), "{:?}", s.delivery_counts(&b.id).await.unwrap());
}

mod audit_tampering {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::with_sqlite_url(super::audit_detects_tampering).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::with_postgres_url(super::audit_detects_tampering).await
    }
}

async fn advisories_dedupe_and_revise(s: Store) {
    let a = advisory("guid-1", "Widget RCE");
    let first = s.upsert_advisory(&a, t0()).await.unwrap();
    assert_eq!((first.revision, first.change), (1, Change::New));
    let again = s.upsert_advisory(&a, t0() + Duration::minutes(5)).await.unwrap();
    assert_eq!(again, Upserted { id: first.id.clone(), revision: 1, change: Change::Unchanged });

    let mut edited = a.clone();
    edited.cvss = Some(Cvss { vector: None, score: 7.5 });
    let rev = s.upsert_advisory(&edited, t0() + Duration::minutes(10)).await.unwrap();
    assert_eq!((rev.id.clone(), rev.revision, rev.change), (first.id.clone(), 2, Change::Revised));

    let stored = s.get_advisory(&first.id).await.unwrap();
    assert_eq!(stored.content, edited);
    assert_eq!(stored.first_seen, t0());
    assert_eq!(stored.last_changed, t0() + Duration::minutes(10));
    let revs = s.advisory_revisions(&first.id).await.unwrap();
    assert_eq!(revs.iter().map(|r| r.revision).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(revs[0].content, a);

    // Same external id from another source is another advisory.
    let mut other = a.clone();
    other.source = "feed-b".into();
    assert_eq!(s.upsert_advisory(&other, t0()).await.unwrap().change, Change::New);
}

async fn triage_queue_and_candidates(s: Store) {
    let x = s.upsert_advisory(&advisory("x", "X"), t0()).await.unwrap();
    let y = s.upsert_advisory(&advisory("y", "Y"), t0() + Duration::seconds(1)).await.unwrap();
    let queue = s.advisories_to_assess(10).await.unwrap();
    assert_eq!(queue.iter().map(|a| a.id.clone()).collect::<Vec<_>>(), vec![x.id.clone(), y.id.clone()]);

    let verdict = |id: &AdvisoryId, rev, relevant, score| Assessment {
        advisory_id: id.clone(),
        advisory_revision: rev,
        relevant,
        threat_level: ThreatLevel::High,
        score,
        reasons: vec![format!("reason for {id}")],
    };
    s.save_assessment(&verdict(&x.id, 1, true, 2.0), t0()).await.unwrap();
    s.save_assessment(&verdict(&y.id, 1, false, 5.0), t0()).await.unwrap();
    assert!(s.advisories_to_assess(10).await.unwrap().is_empty());

    let c = s.list_candidates(&CandidateFilter::default()).await.unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].advisory.id, x.id);
    assert_eq!(c[0].assessment.reasons, vec![format!("reason for {}", x.id)]);
    let all = s.list_candidates(&CandidateFilter { include_irrelevant: true, limit: None }).await.unwrap();
    assert_eq!(
        all.iter().map(|c| c.advisory.id.clone()).collect::<Vec<_>>(),
        vec![y.id.clone(), x.id.clone()]
    );

    // A new revision goes back on the queue, and its old verdict no longer shows.
    let mut changed = advisory("x", "X");
    changed.title = "X (updated)".into();
    s.upsert_advisory(&changed, t0() + Duration::minutes(1)).await.unwrap();
    let queue = s.advisories_to_assess(10).await.unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!((queue[0].id.clone(), queue[0].revision), (x.id.clone(), 2));
    assert!(s.list_candidates(&CandidateFilter::default()).await.unwrap().is_empty());
    assert!(s.latest_assessment(&x.id).await.unwrap().is_none());

    // An assessment for an advisory that does not exist is refused.
    let ghost = AdvisoryId::from_suffix("ghost");
    let err = s.save_assessment(&verdict(&ghost, 1, true, 1.0), t0()).await.unwrap_err();
    assert!(err.to_string().contains("adv_ghost"), "{err}");
}

async fn setup_people(s: &Store) -> (Analyst, Analyst, Analyst) {
    let alice = s.create_analyst("alice", Role::Analyst, "h-alice", t0()).await.unwrap();
    let bob = s.create_analyst("bob", Role::Approver, "h-bob", t0()).await.unwrap();
    let carol = s.create_analyst("carol", Role::Approver, "h-carol", t0()).await.unwrap();
    (alice, bob, carol)
}

async fn bulletin_lifecycle_and_four_eyes(s: Store) {
    let (alice, bob, _) = setup_people(&s).await;
    assert_eq!(s.analyst_by_token_hash("h-bob").await.unwrap().unwrap().name, "bob");
    assert!(s.analyst_by_token_hash("nope").await.unwrap().is_none());
    let dup = s.create_analyst("alice", Role::Admin, "h-other", t0()).await.unwrap_err();
    assert!(matches!(dup, StoreError::Conflict(_)), "{dup}");

    let adv = s.upsert_advisory(&advisory("g", "Widget"), t0()).await.unwrap();
    let b = s
        .create_bulletin(
            &content("Widget RCE", Tlp::Clear, ThreatLevel::High),
            std::slice::from_ref(&adv.id),
            &alice.id,
            "HCB",
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(b.reference, "HCB-2026-0001");
    assert_eq!(b.state, BulletinState::Draft);
    let b2 = s
        .create_bulletin(&content("Second", Tlp::Clear, ThreatLevel::Low), &[], &alice.id, "HCB", t0())
        .await
        .unwrap();
    assert_eq!(b2.reference, "HCB-2026-0002");

    // Drafts are editable; the edit bumps the version.
    let edited = s
        .update_bulletin_content(
            &b.reference,
            &content("Widget RCE v2", Tlp::Clear, ThreatLevel::High),
            &alice.id,
            Some(1),
            t0(),
        )
        .await
        .unwrap();
    assert_eq!((edited.version, edited.content.title.as_str()), (2, "Widget RCE v2"));
    let stale = s
        .update_bulletin_content(
            b.id.as_str(),
            &content("lost update", Tlp::Clear, ThreatLevel::High),
            &alice.id,
            Some(1),
            t0(),
        )
        .await
        .unwrap_err();
    assert!(matches!(stale, StoreError::Conflict(_)), "{stale}");

    let t = s.transition_bulletin(b.id.as_str(), Action::Submit, &alice.id, None, None, t0()).await.unwrap();
    assert_eq!(t.bulletin.state, BulletinState::InReview);
    // No edits once in review.
    let err = s
        .update_bulletin_content(
            b.id.as_str(),
            &content("sneaky", Tlp::Clear, ThreatLevel::High),
            &alice.id,
            None,
            t0(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("only drafts"), "{err}");

    // The author cannot approve.
    let err =
        s.transition_bulletin(b.id.as_str(), Action::Approve, &alice.id, None, None, t0()).await.unwrap_err();
    assert!(matches!(err, StoreError::Transition(TransitionError::FourEyes { .. })), "{err}");
    assert_eq!(s.get_bulletin(b.id.as_str()).await.unwrap().state, BulletinState::InReview);

    // A stale expected version is refused.
    let err = s
        .transition_bulletin(b.id.as_str(), Action::Approve, &bob.id, None, Some(1), t0())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");

    let t = s
        .transition_bulletin(b.id.as_str(), Action::Approve, &bob.id, Some("looks right"), None, t0())
        .await
        .unwrap();
    assert_eq!(t.bulletin.state, BulletinState::Approved);
    assert_eq!(t.bulletin.approver, Some(bob.id.clone()));
    assert_eq!(t.bulletin.review_comment.as_deref(), Some("looks right"));

    // Illegal moves are refused and change nothing.
    let err =
        s.transition_bulletin(b.id.as_str(), Action::Submit, &alice.id, None, None, t0()).await.unwrap_err();
    assert!(matches!(err, StoreError::Transition(TransitionError::Illegal { .. })), "{err}");

    let events = s.bulletin_events(&b.id).await.unwrap();
    let actions: Vec<_> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, vec!["create", "edit", "submit", "approve"]);
    assert_eq!(events[3].actor_id, bob.id.to_string());

    let listed = s.list_bulletins(Some(BulletinState::Approved)).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(s.list_bulletins(None).await.unwrap().len(), 2);
}

async fn publish_fans_out_in_one_transaction(s: Store) {
    let (alice, bob, _) = setup_people(&s).await;
    let open = s.create_organisation("Open Trust", Tlp::Clear, ThreatLevel::Information, t0()).await.unwrap();
    let cleared =
        s.create_organisation("Cleared Trust", Tlp::Amber, ThreatLevel::Information, t0()).await.unwrap();
    let picky = s.create_organisation("Picky Practice", Tlp::Red, ThreatLevel::High, t0()).await.unwrap();
    s.add_contact("Open Trust", "a@open.nhs.uk", "A", t0()).await.unwrap();
    let gone = s.add_contact(open.id.as_str(), "gone@open.nhs.uk", "Gone", t0()).await.unwrap();
    s.unsubscribe_contact(&gone.id, t0()).await.unwrap();
    s.add_endpoint("Open Trust", "https://soc.open.nhs.uk/hook", "whsec_x", t0()).await.unwrap();
    s.add_contact("Cleared Trust", "c@cleared.nhs.uk", "C", t0()).await.unwrap();
    s.add_endpoint(cleared.id.as_str(), "https://soc.cleared.nhs.uk/hook", "whsec_y", t0()).await.unwrap();
    s.add_contact(picky.id.as_str(), "p@picky.nhs.uk", "P", t0()).await.unwrap();

    let b = s
        .create_bulletin(
            &content("Amber medium", Tlp::Amber, ThreatLevel::Medium),
            &[],
            &alice.id,
            "HCB",
            t0(),
        )
        .await
        .unwrap();
    for (who, action) in [(&alice, Action::Submit), (&bob, Action::Approve)] {
        s.transition_bulletin(b.id.as_str(), action, &who.id, None, None, t0()).await.unwrap();
    }
    assert!(s.deliveries_for_bulletin(&b.id).await.unwrap().is_empty(), "no rows before publishing");
    let t = s.transition_bulletin(b.id.as_str(), Action::Publish, &alice.id, None, None, t0()).await.unwrap();
    assert_eq!(t.bulletin.state, BulletinState::Published);
    assert_eq!(t.bulletin.published_at, Some(t0()));
    assert_eq!(t.deliveries_created, 6);

    let rows = s.deliveries_for_bulletin(&b.id).await.unwrap();
    let summary: Vec<(String, String, Option<String>)> =
        rows.iter().map(|d| (d.address.clone(), d.state.to_string(), d.reason.clone())).collect();
    let expect = |addr: &str| summary.iter().find(|r| r.0 == addr).unwrap().clone();
    assert_eq!(expect("a@open.nhs.uk").1, "suppressed");
    assert_eq!(expect("a@open.nhs.uk").2.as_deref(), Some("organisation not cleared for TLP:AMBER"));
    assert_eq!(expect("gone@open.nhs.uk").1, "suppressed");
    assert_eq!(expect("https://soc.open.nhs.uk/hook").1, "suppressed");
    assert_eq!(expect("c@cleared.nhs.uk"), ("c@cleared.nhs.uk".into(), "pending".into(), None));
    assert_eq!(expect("https://soc.cleared.nhs.uk/hook").1, "pending");
    assert!(expect("p@picky.nhs.uk").2.unwrap().contains("minimum threat level"));

    let counts = s.delivery_counts(&b.id).await.unwrap();
    assert_eq!(counts["pending"], 2);
    assert_eq!(counts["suppressed"], 4);
    assert_eq!(counts["delivered"], 0);

    // Publishing twice is illegal and writes nothing more.
    assert!(
        s.transition_bulletin(b.id.as_str(), Action::Publish, &alice.id, None, None, t0()).await.is_err()
    );
    assert_eq!(s.deliveries_for_bulletin(&b.id).await.unwrap().len(), 6);
}

async fn concurrent_approvals_only_one_wins(s: Store) {
    let (alice, bob, carol) = setup_people(&s).await;
    let b = s
        .create_bulletin(&content("Race", Tlp::Clear, ThreatLevel::High), &[], &alice.id, "HCB", t0())
        .await
        .unwrap();
    s.transition_bulletin(b.id.as_str(), Action::Submit, &alice.id, None, None, t0()).await.unwrap();
    let (s1, s2) = (s.clone(), s.clone());
    let (id1, id2) = (b.id.to_string(), b.id.to_string());
    let (bob_id, carol_id) = (bob.id.clone(), carol.id.clone());
    let h1 = tokio::spawn(async move {
        s1.transition_bulletin(&id1, Action::Approve, &bob_id, None, Some(2), t0()).await
    });
    let h2 = tokio::spawn(async move {
        s2.transition_bulletin(&id2, Action::Reject, &carol_id, None, Some(2), t0()).await
    });
    let (r1, r2) = (h1.await.unwrap(), h2.await.unwrap());
    assert!(r1.is_ok() != r2.is_ok(), "exactly one of approve/reject must win: {r1:?} / {r2:?}");
    let events = s.bulletin_events(&b.id).await.unwrap();
    assert_eq!(events.len(), 3, "create, submit and one review");
}

/// Records a failed attempt at a delivery.
async fn fail(s: &Store, id: &DeliveryId, error: &str) -> Delivery {
    let outcome = AttemptOutcome::Failed { error: error.into() };
    s.record_attempt(id, &AttemptRecord { started_at: t0(), duration_ms: 3, outcome, detail: error.into() })
        .await
        .unwrap()
}

/// Drafts `c` as alice, has bob approve it, publishes it: the outbox rows are written.
async fn publish(s: &Store, c: &BulletinContent, alice: &Analyst, bob: &Analyst) -> Bulletin {
    let b = s.create_bulletin(c, &[], &alice.id, "HCB", t0()).await.unwrap();
    for (who, action) in [(alice, Action::Submit), (bob, Action::Approve), (alice, Action::Publish)] {
        s.transition_bulletin(b.id.as_str(), action, &who.id, None, None, t0()).await.unwrap();
    }
    b
}

async fn published(s: &Store, emails: usize) -> (Bulletin, Vec<Delivery>) {
    let (alice, bob, _) = setup_people(s).await;
    let org = s.create_organisation("Trust", Tlp::Clear, ThreatLevel::Information, t0()).await.unwrap();
    for i in 0..emails {
        s.add_contact(org.id.as_str(), &format!("u{i:03}@trust.nhs.uk"), "", t0()).await.unwrap();
    }
    let b = publish(s, &content("Out", Tlp::Clear, ThreatLevel::High), &alice, &bob).await;
    let rows = s.deliveries_for_bulletin(&b.id).await.unwrap();
    (b, rows)
}

/// A new bulletin's first attempts never wait behind retries of an old one: a claim takes
/// them first and fills what is left with retries.
async fn first_attempts_are_claimed_before_retries(s: Store) {
    let (old, rows) = published(&s, 3).await;
    let lease = std::time::Duration::from_secs(30);
    let retry = |d: &Delivery| {
        let outcome = AttemptOutcome::Retry { at: t0(), error: "421 busy".into() };
        (d.id.clone(), AttemptRecord { started_at: t0(), duration_ms: 1, outcome, detail: "421".into() })
    };
    let batch: Vec<_> = rows.iter().map(retry).collect();
    assert!(s.record_attempts(&batch).await.unwrap().iter().all(|r| r.is_ok()));
    let alice = s.analyst_by_name("alice").await.unwrap();
    let bob = s.analyst_by_name("bob").await.unwrap();
    let new = publish(&s, &content("New", Tlp::Clear, ThreatLevel::High), &alice, &bob).await;

    let now = t0() + Duration::seconds(1);
    let claimed = s.claim_due_deliveries("w1", now, lease, 4).await.unwrap();
    let from = |b: &Bulletin| claimed.iter().filter(|d| d.bulletin_id == b.id).count();
    assert_eq!((from(&new), from(&old)), (3, 1), "three first attempts, then one retry");
    assert!(claimed[..3].iter().all(|d| d.attempts == 0), "first attempts come first: {claimed:?}");
    let rest = s.claim_due_deliveries("w2", now, lease, 10).await.unwrap();
    assert_eq!(rest.len(), 2);
    assert!(rest.iter().all(|d| d.bulletin_id == old.id && d.attempts == 1));
    // Only retries due: a claim of one takes one.
    let later = now + Duration::seconds(31);
    assert_eq!(s.claim_due_deliveries("w3", later, lease, 1).await.unwrap().len(), 1);
}

async fn outbox_leases_and_attempts(s: Store) {
    let (b, rows) = published(&s, 3).await;
    assert_eq!(rows.len(), 3);
    let lease = std::time::Duration::from_secs(30);
    let now = t0() + Duration::seconds(1);
    assert_eq!(s.next_due_at().await.unwrap(), Some(t0()));

    let claimed = s.claim_due_deliveries("w1", now, lease, 2).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let rest = s.claim_due_deliveries("w2", now, lease, 10).await.unwrap();
    assert_eq!(rest.len(), 1, "leased rows are not handed out twice");
    assert!(s.claim_due_deliveries("w2", now, lease, 10).await.unwrap().is_empty());

    // w1 dies: its rows come back after the lease.
    let later = now + Duration::seconds(31);
    let retaken = s.claim_due_deliveries("w3", later, lease, 10).await.unwrap();
    let mut ids: Vec<_> = retaken.iter().map(|d| d.id.clone()).collect();
    ids.sort();
    let mut expected: Vec<_> = claimed.iter().chain(rest.iter()).map(|d| d.id.clone()).collect();
    expected.sort();
    assert_eq!(ids, expected);

    let d0 = &retaken[0];
    let done = s
        .record_attempt(
            &d0.id,
            &AttemptRecord {
                started_at: later,
                duration_ms: 12,
                outcome: AttemptOutcome::Delivered,
                detail: "250 OK".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(done.state, DeliveryState::Delivered);
    assert_eq!(done.attempts, 1);
    assert!(done.delivered_at.is_some());

    let d1 = &retaken[1];
    let retry_at = later + Duration::seconds(5);
    let r = s
        .record_attempt(
            &d1.id,
            &AttemptRecord {
                started_at: later,
                duration_ms: 3,
                outcome: AttemptOutcome::Retry { at: retry_at, error: "451 try later".into() },
                detail: "451 try later".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!((r.state, r.attempts, r.next_attempt_at), (DeliveryState::Pending, 1, retry_at));
    assert_eq!(r.reason.as_deref(), Some("451 try later"));
    // Not due yet, even though its lease was released.
    assert!(
        s.claim_due_deliveries("w4", later + Duration::seconds(1), lease, 10)
            .await
            .unwrap()
            .iter()
            .all(|d| d.id != d1.id)
    );
    let due = s.claim_due_deliveries("w4", retry_at, lease, 10).await.unwrap();
    assert!(due.iter().any(|d| d.id == d1.id));

    let d2 = &retaken[2];
    let f = s
        .record_attempt(
            &d2.id,
            &AttemptRecord {
                started_at: later,
                duration_ms: 3,
                outcome: AttemptOutcome::Failed { error: "550 no such user".into() },
                detail: "550 no such user".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(f.state, DeliveryState::Failed);

    let attempts = s.delivery_attempts(&d1.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!((attempts[0].attempt, attempts[0].outcome.as_str(), attempts[0].duration_ms), (1, "retry", 3));
    let counts = s.delivery_counts(&b.id).await.unwrap();
    assert_eq!((counts["delivered"], counts["pending"], counts["failed"]), (1, 1, 1));
    let missing = s
        .record_attempt(
            &DeliveryId::from_suffix("nope"),
            &AttemptRecord {
                started_at: later,
                duration_ms: 0,
                outcome: AttemptOutcome::Delivered,
                detail: String::new(),
            },
        )
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("dlv_nope"));
}

async fn concurrent_workers_claim_disjoint_rows(s: Store) {
    let (_, rows) = published(&s, 200).await;
    assert_eq!(rows.len(), 200);
    let now = t0() + Duration::seconds(1);
    let lease = std::time::Duration::from_secs(60);
    let mut handles = Vec::new();
    for w in 0..4 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = s.claim_due_deliveries(&format!("w{w}"), now, lease, 7).await.unwrap();
                if got.is_empty() {
                    break;
                }
                mine.extend(got.into_iter().map(|d| d.id));
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(n, 200, "every row claimed");
    assert_eq!(all.len(), 200, "no row claimed twice");
}

async fn withdraw_cancels_pending(s: Store) {
    let (b, rows) = published(&s, 2).await;
    let now = t0() + Duration::seconds(1);
    s.record_attempt(
        &rows[0].id,
        &AttemptRecord {
            started_at: now,
            duration_ms: 1,
            outcome: AttemptOutcome::Delivered,
            detail: String::new(),
        },
    )
    .await
    .unwrap();
    let alice = s.analyst_by_name("alice").await.unwrap();
    let t = s
        .transition_bulletin(&b.reference, Action::Withdraw, &alice.id, Some("wrong product"), None, now)
        .await
        .unwrap();
    assert_eq!(t.bulletin.state, BulletinState::Withdrawn);
    assert_eq!(t.deliveries_cancelled, 1);
    let counts = s.delivery_counts(&b.id).await.unwrap();
    assert_eq!((counts["delivered"], counts["cancelled"], counts["pending"]), (1, 1, 0));
    assert!(
        s.claim_due_deliveries("w", now, std::time::Duration::from_secs(5), 10).await.unwrap().is_empty()
    );
}

async fn bad_input_is_refused_and_nothing_stored(s: Store) {
    let err = s.add_contact("org_doesnotexist", "x@y.uk", "", t0()).await.unwrap_err();
    assert_eq!(err.to_string(), "organisation `org_doesnotexist` not found");
    let org = s.create_organisation("Trust", Tlp::Clear, ThreatLevel::Information, t0()).await.unwrap();
    let err = s.add_endpoint(org.id.as_str(), "ftp://soc.example/hook", "whsec_x", t0()).await.unwrap_err();
    assert!(err.to_string().contains("ftp://soc.example/hook"), "{err}");
    let err = s.add_contact(org.id.as_str(), "not-an-email", "", t0()).await.unwrap_err();
    assert!(err.to_string().contains("not-an-email"), "{err}");
    assert!(s.list_endpoints(&org.id).await.unwrap().is_empty());
    assert!(s.list_contacts(&org.id).await.unwrap().is_empty());
    let dup = s.create_organisation("Trust", Tlp::Clear, ThreatLevel::Information, t0()).await.unwrap_err();
    assert!(dup.to_string().contains("already exists"), "{dup}");

    // A bulletin citing an advisory that does not exist is refused whole: no bulletin, and
    // the reference counter is not consumed.
    let alice = s.create_analyst("alice", Role::Analyst, "h", t0()).await.unwrap();
    let err = s
        .create_bulletin(
            &content("x", Tlp::Clear, ThreatLevel::Low),
            &[AdvisoryId::from_suffix("ghost")],
            &alice.id,
            "HCB",
            t0(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "advisory `adv_ghost` not found");
    assert!(s.list_bulletins(None).await.unwrap().is_empty());
    let b = s
        .create_bulletin(&content("x", Tlp::Clear, ThreatLevel::Low), &[], &alice.id, "HCB", t0())
        .await
        .unwrap();
    assert_eq!(b.reference, "HCB-2026-0001");

    let err = s
        .create_bulletin(&content("  ", Tlp::Clear, ThreatLevel::Low), &[], &alice.id, "HCB", t0())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("title"), "{err}");
    let bad = AdvisoryContent::new("feed", "", "no id");
    assert!(s.upsert_advisory(&bad, t0()).await.is_err());
    assert!(s.advisories_to_assess(10).await.unwrap().is_empty());
    assert!(matches!(s.get_bulletin("HCB-1999-0001").await.unwrap_err(), StoreError::NotFound { .. }));
}

async fn feed_state_tracks_health(s: Store) {
    assert!(s.feed_state("f").await.unwrap().is_none());
    s.record_feed_success(
        "f",
        Some((Some("\"abc\"".into()), Some("Tue, 03 Mar 2026 10:00:00 GMT".into()))),
        5,
        t0(),
    )
    .await
    .unwrap();
    s.record_feed_failure("f", "HTTP 503 from https://feed", t0() + Duration::minutes(1)).await.unwrap();
    s.record_feed_failure("f", "timed out", t0() + Duration::minutes(2)).await.unwrap();
    let st = s.feed_state("f").await.unwrap().unwrap();
    assert_eq!(st.consecutive_failures, 2);
    assert_eq!(st.last_error.as_deref(), Some("timed out"));
    assert_eq!(st.last_success, Some(t0()));
    assert_eq!(st.etag.as_deref(), Some("\"abc\""));
    // A 304 keeps the validators and resets the failure count.
    s.record_feed_success("f", None, 0, t0() + Duration::minutes(3)).await.unwrap();
    let st = s.feed_state("f").await.unwrap().unwrap();
    assert_eq!((st.consecutive_failures, st.items_seen), (0, 5));
    assert_eq!(st.etag.as_deref(), Some("\"abc\""));
    assert_eq!(st.last_error, None);
    assert_eq!(s.list_feed_states().await.unwrap().len(), 1);
}

#[tokio::test]
async fn bad_url_names_the_url() {
    let err = Store::connect("mysql://localhost/db").await.err().unwrap();
    assert!(err.to_string().contains("mysql://localhost/db"), "{err}");
}

async fn assessed(s: &Store, ext: &str, relevant: bool) -> AdvisoryId {
    let u = s.upsert_advisory(&advisory(ext, ext), t0()).await.unwrap();
    s.save_assessment(
        &Assessment {
            advisory_id: u.id.clone(),
            advisory_revision: u.revision,
            relevant,
            threat_level: ThreatLevel::Medium,
            score: 4.0,
            reasons: vec!["probable product match: X".into()],
        },
        t0(),
    )
    .await
    .unwrap();
    u.id
}

async fn overrides_apply_to_their_revision_and_are_audited(s: Store) {
    let (alice, _, _) = setup_people(&s).await;
    let id = assessed(&s, "ov-1", true).await;
    let err = s.override_assessment(&id, Some(false), None, "  ", &alice.id, t0()).await.unwrap_err();
    assert!(err.to_string().contains("reason is required"), "{err}");
    let c = s
        .override_assessment(
            &id,
            Some(false),
            Some(ThreatLevel::Low),
            "consumer product, not used in the NHS",
            &alice.id,
            t0(),
        )
        .await
        .unwrap();
    assert!(!c.assessment.relevant);
    assert_eq!(c.assessment.threat_level, ThreatLevel::Low);
    assert_eq!(c.assessment.reasons[0], "overridden by alice: consumer product, not used in the NHS");
    assert_eq!(c.override_info.as_ref().unwrap().analyst, "alice");
    assert!(s.list_candidates(&CandidateFilter::default()).await.unwrap().is_empty());
    let all = s.list_candidates(&CandidateFilter { include_irrelevant: true, limit: None }).await.unwrap();
    assert_eq!(
        all[0].assessment.reasons[1], "probable product match: X",
        "triage's own reasons stay visible"
    );
    // A second override replaces the first.
    let c = s
        .override_assessment(&id, Some(true), None, "used by two trusts after all", &alice.id, t0())
        .await
        .unwrap();
    assert!(c.assessment.relevant);
    assert_eq!(c.assessment.threat_level, ThreatLevel::Medium, "level not overridden this time");

    // A new revision is assessed afresh: the override belonged to the old one.
    let mut changed = advisory("ov-1", "ov-1");
    changed.summary = "now with more detail".into();
    s.upsert_advisory(&changed, t0() + Duration::hours(1)).await.unwrap();
    assert!(s.candidate(&id).await.unwrap().is_none(), "not assessed yet");

    let log = s.audit_entries(0, 100).await.unwrap();
    let overrides: Vec<&AuditEntry> = log.iter().filter(|e| e.action == "triage.override").collect();
    assert_eq!(overrides.len(), 2);
    assert_eq!(overrides[0].actor, alice.id.to_string());
    assert!(overrides[0].details.contains("consumer product"), "{}", overrides[0].details);
    let check = s.verify_audit().await.unwrap();
    // Two overrides after the three users were created (each audited).
    assert_eq!(log.iter().filter(|e| e.action == "user.create").count(), 3);
    assert_eq!((check.entries, check.broken), (5, None));
}

async fn audit_detects_tampering(s: Store, url: String) {
    let (alice, bob, _) = setup_people(&s).await;
    publish(&s, &content("Audited", Tlp::Clear, ThreatLevel::High), &alice, &bob).await;
    let log = s.audit_entries(0, 100).await.unwrap();
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        vec![
            "user.create",
            "user.create",
            "user.create",
            "bulletin.create",
            "bulletin.submit",
            "bulletin.approve",
            "bulletin.publish"
        ]
    );
    assert_eq!(log[5].actor, bob.id.to_string());
    assert_eq!(log[5].seq, 6);
    assert_eq!(s.verify_audit().await.unwrap(), AuditCheck { entries: 7, broken: None });

    let raw = |sql: &'static str| {
        let url = url.clone();
        async move {
            if url.starts_with("sqlite") {
                let p = sqlx::SqlitePool::connect(&url).await.unwrap();
                sqlx::query(sql).execute(&p).await.unwrap();
                p.close().await;
            } else {
                let p = sqlx::PgPool::connect(&url).await.unwrap();
                sqlx::query(sql).execute(&p).await.unwrap();
                p.close().await;
            }
        }
    };
    // Edited.
    raw("UPDATE audit_log SET actor = 'usr_someone_else' WHERE seq = 6").await;
    let check = s.verify_audit().await.unwrap();
    assert_eq!(check.broken.as_ref().map(|b| b.0), Some(6));
    assert!(check.broken.unwrap().1.contains("edited"));
    // Deleted from the middle (after restoring the edit would not help: delete instead).
    raw("DELETE FROM audit_log WHERE seq = 6").await;
    let check = s.verify_audit().await.unwrap();
    assert_eq!(check.broken.as_ref().map(|b| b.0), Some(7));
    assert!(check.broken.unwrap().1.contains("missing"));
    // Deleted at the end: caught by the head.
    raw("DELETE FROM audit_log WHERE seq >= 6").await;
    let check = s.verify_audit().await.unwrap();
    assert!(check.broken.unwrap().1.contains("deleted"));
}

async fn disabling_and_replaying(s: Store) {
    let (alice, bob, _) = setup_people(&s).await;
    let org = s.create_organisation("Trust", Tlp::Clear, ThreatLevel::Information, t0()).await.unwrap();
    let ep =
        s.add_endpoint(org.id.as_str(), "https://soc.trust.example/hook", "whsec_eA==", t0()).await.unwrap();
    let mut bulletins = Vec::new();
    for title in ["One", "Two"] {
        let b = publish(&s, &content(title, Tlp::Clear, ThreatLevel::High), &alice, &bob).await;
        bulletins.push(b);
    }
    let first = s.deliveries_for_bulletin(&bulletins[0].id).await.unwrap().remove(0);
    let err = s.replay_delivery(&first.id, "usr_x", t0()).await.unwrap_err();
    assert!(err.to_string().contains("is pending; only failed or delivered"), "{err}");
    fail(&s, &first.id, "HTTP 404").await;

    // 410 Gone: the endpoint is disabled and its other pending delivery suppressed.
    let disabled = s.set_endpoint_enabled(&ep.id, false, "system", "HTTP 410: gone", t0()).await.unwrap();
    assert!(!disabled.enabled);
    let second = s.deliveries_for_bulletin(&bulletins[1].id).await.unwrap().remove(0);
    assert_eq!(second.state, DeliveryState::Suppressed);
    assert_eq!(second.reason.as_deref(), Some("endpoint disabled: HTTP 410: gone"));

    // Replay: failed → pending, due now, same id, history kept.
    s.set_endpoint_enabled(&ep.id, true, "usr_admin", "receiver fixed", t0()).await.unwrap();
    let later = t0() + Duration::hours(2);
    let ids =
        s.replay_failed_for_endpoint(&ep.id, t0() - Duration::minutes(1), "usr_admin", later).await.unwrap();
    assert_eq!(ids, vec![first.id.clone()]);
    let replayed = s.get_delivery(&first.id).await.unwrap();
    assert_eq!(
        (replayed.state, replayed.attempts, replayed.next_attempt_at),
        (DeliveryState::Pending, 1, later)
    );
    assert_eq!(replayed.reason.as_deref(), Some("replayed"));
    assert!(
        s.replay_failed_for_endpoint(&ep.id, later, "usr_admin", later).await.unwrap().is_empty(),
        "since filters"
    );
    let suppressed = s.replay_delivery(&second.id, "usr_admin", later).await.unwrap_err();
    assert!(
        suppressed.to_string().contains("suppressed"),
        "deliberate suppressions are not replayed: {suppressed}"
    );

    let until = later + Duration::hours(24);
    let rotated = s.rotate_endpoint_secret(&ep.id, "whsec_bmV3", until, "usr_admin", t0()).await.unwrap();
    assert_eq!(
        (rotated.secret.as_str(), rotated.previous_secret.as_deref()),
        ("whsec_bmV3", Some("whsec_eA=="))
    );
    assert_eq!(rotated.signing_secrets(later), vec!["whsec_bmV3", "whsec_eA=="]);
    assert_eq!(rotated.signing_secrets(until), vec!["whsec_bmV3"]);
    let log = s.audit_entries(0, 100).await.unwrap();
    let rotation = log.iter().find(|e| e.action == "endpoint.rotate_secret").unwrap();
    assert!(!rotation.details.contains("whsec_"), "secrets never reach the audit log: {}", rotation.details);
    let slack = s
        .add_endpoint_with_format(
            org.id.as_str(),
            "https://hooks.slack.example/T1",
            "whsec_eA==",
            EndpointFormat::Slack,
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(s.get_endpoint(&slack.id).await.unwrap().format, EndpointFormat::Slack);

    let actions: Vec<String> = s.audit_entries(0, 100).await.unwrap().into_iter().map(|e| e.action).collect();
    for a in ["endpoint.disable", "endpoint.enable", "delivery.replay", "endpoint.rotate_secret"] {
        assert!(actions.iter().any(|x| x == a), "{a} audited: {actions:?}");
    }
    assert_eq!(s.verify_audit().await.unwrap().broken, None);
}

async fn interests_target_organisations(s: Store) {
    let (alice, bob, _) = setup_people(&s).await;
    let gp = s.create_organisation("Riverside GP", Tlp::Green, ThreatLevel::Information, t0()).await.unwrap();
    s.add_contact(gp.id.as_str(), "pm@riverside.nhs.test", "", t0()).await.unwrap();
    let gp = s
        .set_organisation_interests(
            "Riverside GP",
            &["EMIS Web".into(), " Docman ".into(), "".into()],
            "usr_admin",
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(gp.interests, vec!["EMIS Web", "Docman"]);
    let hospital =
        s.create_organisation("Northshire", Tlp::Green, ThreatLevel::Information, t0()).await.unwrap();
    s.add_contact(hospital.id.as_str(), "soc@northshire.nhs.test", "", t0()).await.unwrap();

    let mut pacs = content("Philips Vue PACS flaw", Tlp::Clear, ThreatLevel::High);
    pacs.affected_products = vec!["Philips Vue PACS".into()];
    let mut emis = content("EMIS Web remote code execution", Tlp::Clear, ThreatLevel::High);
    emis.affected_products = vec![];
    let mut states = Vec::new();
    for c in [pacs, emis] {
        let b = publish(&s, &c, &alice, &bob).await;
        let rows = s.deliveries_for_bulletin(&b.id).await.unwrap();
        let gp_row = rows.iter().find(|d| d.address == "pm@riverside.nhs.test").unwrap();
        let hospital_row = rows.iter().find(|d| d.address == "soc@northshire.nhs.test").unwrap();
        assert_eq!(hospital_row.state, DeliveryState::Pending, "no interests: every bulletin");
        states.push((gp_row.state, gp_row.reason.clone()));
    }
    assert_eq!(
        states[0],
        (DeliveryState::Suppressed, Some("outside the organisation's interests (EMIS Web, Docman)".into()))
    );
    assert_eq!(states[1], (DeliveryState::Pending, None));
    assert!(s.audit_entries(0, 100).await.unwrap().iter().any(|e| e.action == "organisation.interests"));
}

async fn hard_bounces_count_within_thirty_days(s: Store) {
    let (_, rows) = published(&s, 1).await;
    let contact: ContactId = rows[0].recipient_id.parse().unwrap();
    fail(&s, &rows[0].id, "550 5.1.1 no such user").await;
    // One bounce: below a threshold of two.
    assert!(!s.record_hard_bounce(&contact, "550 5.1.1 no such user", 2, t0()).await.unwrap());
    let alice = s.analyst_by_name("alice").await.unwrap();
    let bob = s.analyst_by_name("bob").await.unwrap();
    let second = publish(&s, &content("Again", Tlp::Clear, ThreatLevel::High), &alice, &bob).await;
    let row = s.deliveries_for_bulletin(&second.id).await.unwrap().remove(0);
    fail(&s, &row.id, "550 5.1.1 no such user").await;
    // The same two bounces seen from 31 days later are outside the window.
    assert!(!s.record_hard_bounce(&contact, "550", 2, t0() + Duration::days(31)).await.unwrap());
    assert_eq!(s.get_contact(&contact).await.unwrap().suppressed_reason, None);
    // Within 30 days they are two: the address is suppressed, with the reason, and audited.
    assert!(
        s.record_hard_bounce(&contact, "550 5.1.1 no such user", 2, t0() + Duration::days(1)).await.unwrap()
    );
    let c = s.get_contact(&contact).await.unwrap();
    assert_eq!(
        c.suppressed_reason.as_deref(),
        Some("address suppressed after 2 hard bounces (last: 550 5.1.1 no such user)")
    );
    assert!(s.audit_entries(0, 100).await.unwrap().iter().any(|e| e.action == "contact.suppress"));
}

/// Two stores of one process on the same SQLite file share its writer connection; closing one
/// leaves the other writing (it opens a new connection), and what each wrote the other reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stores_on_one_file_share_the_writer() {
    with_sqlite_url(|a, url| async move {
        let (_, rows) = published(&a, 6).await;
        let b = Store::connect(&url).await.unwrap();
        let now = t0() + Duration::seconds(1);
        let lease = std::time::Duration::from_secs(60);
        let by_a = a.claim_due_deliveries("a", now, lease, 3).await.unwrap();
        assert_eq!(by_a.len(), 3);
        a.close().await;
        let by_b = b.claim_due_deliveries("b", now, lease, 10).await.unwrap();
        assert_eq!(by_b.len(), 3, "b claims the rest after a closed");
        let mut claimed: Vec<_> = by_a.iter().chain(&by_b).map(|d| d.id.clone()).collect();
        claimed.sort();
        let mut all: Vec<_> = rows.iter().map(|d| d.id.clone()).collect();
        all.sort();
        assert_eq!(claimed, all, "every row claimed once, across the two stores");
        let done = vec![(
            by_a[0].id.clone(),
            AttemptRecord {
                started_at: now,
                duration_ms: 1,
                outcome: AttemptOutcome::Delivered,
                detail: "250 ok".into(),
            },
        )];
        assert!(b.record_attempts(&done).await.unwrap()[0].is_ok());
        assert_eq!(
            b.get_delivery(&by_a[0].id).await.unwrap().state,
            broadcast_core::DeliveryState::Delivered
        );
    })
    .await
}
