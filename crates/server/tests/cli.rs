//! The `broadcast` binary driven as an operator would, on a throwaway SQLite store.
//! Fixtures: `../../../tests/fixtures/medical-advisories.xml` (see its PROVENANCE.md) and
//! `broken-feed.xml` (feed-rs/feed-rs fixture/rss2/rss_2.0_invalid_1.xml, not well-formed).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

impl Env {
    fn new(extra: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("broadcast.toml");
        // A copy, so a test can edit the feed between runs.
        let feed = dir.path().join("medical.xml");
        std::fs::copy(repo().join("tests/fixtures/medical-advisories.xml"), &feed).unwrap();
        let broken = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken-feed.xml");
        std::fs::write(
            &config,
            format!(
                r#"
[store]
url = "sqlite://{db}"
[security]
link_secret = "test-secret-test-secret-test-secret-0123"
[bulletins]
templates_dir = "{templates}"
[email]
transport = "file"
file_dir = "{mail}"
[triage]
watchlist_file = "{watchlist}"
old_after_days = 3650
[[feeds]]
type = "rss"
id = "medical"
url = "file://{feed}"
[[feeds]]
type = "rss"
id = "broken"
url = "file://{broken}"
{extra}
"#,
                db = dir.path().join("b.db").display(),
                templates = repo().join("bulletin-templates").display(),
                watchlist = repo().join("config/watchlist.toml").display(),
                mail = dir.path().join("mail").display(),
                feed = feed.display(),
                broken = broken.display(),
            ),
        )
        .unwrap();
        Env { dir, config }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_broadcast"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs with `input` on standard input; the output.
    fn with_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_broadcast"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs and expects failure; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "{args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }
}

/// The first admin is created from the command line, with the password on standard input;
/// short or missing passwords are refused before anything is stored.
#[test]
fn console_users_are_created_with_a_password() {
    let e = Env::new("");
    let err =
        String::from_utf8(e.with_stdin(&["user", "add", "root", "--role", "admin"], "").stderr).unwrap();
    assert!(err.contains("no password on standard input"), "{err}");
    let out = e.with_stdin(&["user", "add", "root", "--role", "admin"], "short\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 12 characters"));
    assert!(!e.ok(&["analyst", "list"]).contains("root"), "nothing stored for a refused password");
    let out = e.with_stdin(&["user", "add", "root", "--role", "admin"], "a sound passphrase here\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty(), "a piped password is not echoed back");
    let list = e.ok(&["analyst", "list"]);
    assert!(list.contains("root") && list.contains("admin"), "{list}");
    let out = e.with_stdin(&["user", "password", "root"], "another sound passphrase\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("password set for root"));
    let out = e.with_stdin(&["user", "password", "nobody"], "another sound passphrase\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody"), "unknown users are named");
    let log = e.ok(&["audit", "list"]);
    assert!(log.contains("user.create") && log.matches("user.password").count() == 2, "{log}");
    assert!(!log.contains("argon2"), "no hash in the audit log");
}

/// The KEV catalog marks the collected advisory whose CVE it lists, and triage assesses the
/// new revision with the KEV reason; running it again changes nothing.
#[test]
fn kev_catalog_marks_advisories_and_triage_sees_it() {
    let kev = repo().join("tests/fixtures/kev-sample.json");
    let e =
        Env::new(&format!("[[feeds]]\ntype = \"kev\"\nid = \"kev\"\nurl = \"file://{}\"\n", kev.display()));
    e.ok(&["collect", "--once", "medical"]);
    let out = e.ok(&["collect", "--once", "kev"]);
    assert!(out.contains("4 KEV listings new or changed, 1 advisories marked"), "{out}");
    assert!(out.contains("1 assessed"), "the marked advisory is assessed again: {out}");
    let cands: serde_json::Value = serde_json::from_str(&e.ok(&["candidates", "--json", "--all"])).unwrap();
    let c = cands["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["advisory"]["cves"].as_array().unwrap().iter().any(|v| v == "CVE-2024-41798"))
        .expect("the Siemens advisory");
    assert_eq!(c["advisory"]["revision"], 2);
    assert_eq!(c["advisory"]["kev"]["date_added"], "2024-10-15");
    let reasons = c["assessment"]["reasons"].to_string();
    assert!(reasons.contains("in KEV since 2024-10-15"), "{reasons}");
    // The same catalog again (the file is unchanged: not even parsed), then forced.
    let again = e.ok(&["collect", "--once", "kev"]);
    assert!(again.contains("not modified"), "{again}");
}

#[test]
fn bad_configuration_is_refused_naming_the_key() {
    let e = Env::new("");
    assert!(e.ok(&["check-config"]).contains("configuration is valid (2 feeds)"));

    let err = Env::new("[delivery]\nbatch_sise = 3").fails(&["check-config"]);
    assert!(err.contains("unknown field `batch_sise`") && err.contains("delivery"), "{err}");

    let err = Env::new(
        "[[feeds]]\ntype = \"rss\"\nid = \"x\"\nurl = \"https://e.org/f\"\nschedule = \"every five minutes\"",
    )
    .fails(&["check-config"]);
    assert!(err.contains("feed `x`: schedule: `every five minutes` is not a cron expression"), "{err}");

    let err = Env::new("[[feeds]]\ntype = \"gopher\"\nid = \"x\"").fails(&["check-config"]);
    assert!(err.contains("gopher"), "{err}");

    let err = Env::new("[[feeds]]\ntype = \"rss\"\nid = \"medical\"\nurl = \"https://e.org/f\"")
        .fails(&["check-config"]);
    assert!(err.contains("id `medical` is used twice"), "{err}");

    let err = Env::new("[api]\npublic_url = \"not a url\"").fails(&["check-config"]);
    assert!(err.contains("api.public_url"), "{err}");

    let missing = Command::new(env!("CARGO_BIN_EXE_broadcast"))
        .args(["--config", "/nonexistent/broadcast.toml", "check-config"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/broadcast.toml does not exist"));

    // The config file can be named by BROADCAST_CONFIG; other BROADCAST_* variables that are
    // not configuration keys are not mistaken for unknown keys.
    let by_env = Command::new(env!("CARGO_BIN_EXE_broadcast"))
        .arg("check-config")
        .env("BROADCAST_CONFIG", &e.config)
        .env("BROADCAST_SOMETHING_ELSE", "1")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&by_env.stdout).contains("(2 feeds)"), "{by_env:?}");

    // Environment variables override the file and are checked the same way.
    let out = Command::new(env!("CARGO_BIN_EXE_broadcast"))
        .args(["--config", e.config.to_str().unwrap(), "check-config"])
        .env("BROADCAST_DELIVERY__BATCH_SIZE", "lots")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("delivery.batch_size"), "{out:?}");
}

#[test]
fn subscribers_are_managed_and_bad_input_stores_nothing() {
    let e = Env::new("");
    let org = e.ok(&["org", "add", "Northshire Trust", "--tlp-clearance", "AMBER"]).trim().to_owned();
    assert!(org.starts_with("org_"), "{org}");
    let err = e.fails(&["contact", "add", "Nowhere Trust", "soc@nowhere.nhs.uk"]);
    assert!(err.contains("organisation `Nowhere Trust` not found"), "{err}");
    let err = e.fails(&["contact", "add", "Northshire Trust", "not-an-email"]);
    assert!(err.contains("`not-an-email` is not an email address"), "{err}");
    assert!(
        e.ok(&["contact", "add", "Northshire Trust", "soc@northshire.nhs.uk", "--name", "SOC"])
            .starts_with("con_")
    );
    let err = e.fails(&["endpoint", "add", &org, "ftp://soc.northshire.nhs.uk/hook"]);
    assert!(err.contains("`ftp://soc.northshire.nhs.uk/hook` is not an http(s) URL"), "{err}");
    let err = e.fails(&["endpoint", "add", &org, "http://169.254.169.254/latest/meta-data"]);
    assert!(err.contains("SSRF guard: 169.254.169.254 is a link-local address"), "{err}");
    let out = e.ok(&["endpoint", "add", &org, "https://soc.northshire.nhs.uk/hook"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ep_") && lines[1].starts_with("whsec_"), "{out}");
    let shown: serde_json::Value = serde_json::from_str(&e.ok(&["org", "show", "Northshire Trust"])).unwrap();
    assert_eq!(shown["contacts"].as_array().unwrap().len(), 1);
    assert_eq!(shown["endpoints"].as_array().unwrap().len(), 1);
    assert!(shown["endpoints"][0].get("secret").is_none(), "secrets are never shown again");

    // The example seed loads, and loading it twice adds nothing.
    let seed = repo().join("config/examples/seed.toml");
    let first = e.ok(&["seed", seed.to_str().unwrap()]);
    assert!(first.contains("3 analysts, 3 organisations, 4 contacts"), "{first}");
    let second = e.ok(&["seed", seed.to_str().unwrap()]);
    assert!(second.contains("0 analysts, 0 organisations, 0 contacts, 0 endpoints"), "{second}");
    // A seed with a bad entry is refused before anything is written.
    let bad = e.dir.path().join("bad-seed.toml");
    std::fs::write(&bad, "[[organisations]]\nname = \"Half Trust\"\ncontacts = [{ email = \"ok@half.nhs.uk\" }, { email = \"broken\" }]\n").unwrap();
    let err = e.fails(&["seed", bad.to_str().unwrap()]);
    assert!(err.contains("Half Trust") && err.contains("`broken`"), "{err}");
    assert!(!e.ok(&["org", "list"]).contains("Half Trust"));
}

#[test]
fn collect_draft_and_four_eyes_from_the_command_line() {
    let e = Env::new("");
    let token = e.ok(&["analyst", "add", "alice", "--role", "approver"]);
    assert!(token.trim().starts_with("bct_"));
    e.ok(&["analyst", "add", "bob", "--role", "approver"]);
    e.ok(&["analyst", "add", "carol"]);

    let out = e.ok(&["collect", "--once", "medical"]);
    assert!(out.contains("medical: 18 new, 0 revised, 0 unchanged, 0 refused; 18 assessed"), "{out}");
    // The same feed again stores nothing twice (and an unchanged file is not even re-read).
    let again = e.ok(&["collect", "--once", "medical"]);
    assert!(again.contains("0 new, 0 revised") && again.contains("not modified"), "{again}");

    // The source edits one item: it becomes revision 2 of the same advisory, not a new one.
    let feed = e.dir.path().join("medical.xml");
    let text = std::fs::read_to_string(&feed).unwrap();
    let edited = text.replacen("Highest CVSS v3 score", "Highest CVSS v3 score (revised)", 1);
    std::fs::write(&feed, edited).unwrap();
    let third = e.ok(&["collect", "--once", "medical"]);
    assert!(third.contains("medical: 0 new, 1 revised, 17 unchanged, 0 refused; 1 assessed"), "{third}");
    let all: serde_json::Value = serde_json::from_str(&e.ok(&["candidates", "--all", "--json"])).unwrap();
    let list = all["candidates"].as_array().unwrap();
    assert_eq!(list.len(), 18);
    let revised = list.iter().find(|c| c["advisory"]["revision"] == 2).expect("one advisory at revision 2");
    let shown: serde_json::Value =
        serde_json::from_str(&e.ok(&["advisory", "show", revised["advisory"]["id"].as_str().unwrap()]))
            .unwrap();
    assert_eq!(shown["revisions"].as_array().unwrap().len(), 2);
    assert_eq!(shown["assessment"]["advisory_revision"], 2, "the new revision was triaged again");

    let cands: serde_json::Value = serde_json::from_str(&e.ok(&["candidates", "--json"])).unwrap();
    let list = cands["candidates"].as_array().unwrap();
    assert!(list.len() >= 5, "{} candidates", list.len());
    let top = &list[0];
    let first_reason = top["assessment"]["reasons"][0].as_str().unwrap();
    assert!(
        first_reason.starts_with("probable product match")
            || first_reason.starts_with("affected vendor")
            || first_reason.starts_with("keyword:"),
        "{first_reason}"
    );
    let adv = top["advisory"]["id"].as_str().unwrap();

    let drafted = e.ok(&["bulletin", "draft", adv, "--as", "alice"]);
    let reference = drafted.split_whitespace().next().unwrap().to_owned();
    assert!(reference.starts_with("HCB-") && reference.ends_with("-0001"), "{drafted}");
    e.ok(&["bulletin", "submit", &reference, "--as", "alice"]);
    let err = e.fails(&["bulletin", "approve", &reference, "--as", "alice"]);
    assert!(err.contains("four-eyes rule: alice wrote this bulletin and cannot approve it"), "{err}");
    let err = e.fails(&["bulletin", "approve", &reference, "--as", "carol"]);
    assert!(err.contains("carol (role analyst) may not approve"), "{err}");
    assert!(e.ok(&["bulletin", "approve", &reference, "--as", "bob"]).contains("is now approved"));
    let published = e.ok(&["bulletin", "publish", &reference, "--as", "alice"]);
    assert!(published.contains("is now published; 0 deliveries queued"), "{published}");
    let err = e.fails(&["bulletin", "publish", &reference, "--as", "alice"]);
    assert!(err.contains("cannot publish a bulletin that is published"), "{err}");
    let shown: serde_json::Value = serde_json::from_str(&e.ok(&["bulletin", "show", &reference])).unwrap();
    let actions: Vec<&str> =
        shown["history"].as_array().unwrap().iter().map(|h| h["action"].as_str().unwrap()).collect();
    assert_eq!(actions, vec!["create", "submit", "approve", "publish"]);
}

#[test]
fn a_malformed_feed_fails_loudly_and_stores_nothing() {
    let e = Env::new("");
    let err = e.fails(&["collect", "--once", "broken"]);
    assert!(err.contains("broken-feed.xml") && err.contains("not a readable"), "{err}");
    let feeds = e.ok(&["feeds"]);
    assert!(feeds.contains("FAILING (1 in a row)"), "{feeds}");
    assert!(e.ok(&["candidates", "--all"]).contains("no candidates yet"));
    let err = e.fails(&["collect", "--once", "nope"]);
    assert!(err.contains("no feed `nope`"), "{err}");
}

#[test]
fn triage_eval_reports_metrics_and_misses() {
    let e = Env::new("");
    let fixtures = repo().join("crates/collect/tests/fixtures");
    let labels = e.dir.path().join("labels.csv");
    std::fs::write(
        &labels,
        format!(
            "file,label_health,title\n{m},1,\"Philips Vue PACS, medical\"\n{i},0,Schneider InTouch\n",
            m = fixtures.join("icsma-24-200-01.json").display(),
            i = fixtures.join("icsa-17-089-01.json").display()
        ),
    )
    .unwrap();
    let out = e.ok(&["triage", "eval", "--labels", labels.to_str().unwrap()]);
    assert!(out.contains("triage evaluation of 2 documents (1 labelled relevant, 1 not)"), "{out}");
    assert!(out.contains("precision 1.000   recall 1.000   F1 1.000"), "{out}");
    assert!(out.contains("labelled relevant                        1               0"), "{out}");
    assert!(out.contains("misses (labelled relevant, predicted not): 0"), "{out}");
    let err = e.fails(&["triage", "eval", "--labels", labels.to_str().unwrap(), "--require-recall", "1.01"]);
    assert!(err.contains("below the required recall/precision"), "{err}");

    std::fs::write(
        &labels,
        format!("file,label\n{},maybe\n", fixtures.join("icsa-17-089-01.json").display()),
    )
    .unwrap();
    let err = e.fails(&["triage", "eval", "--labels", labels.to_str().unwrap()]);
    assert!(err.contains("row 2: label `maybe` is not 0 or 1"), "{err}");
    std::fs::write(&labels, "file,label\nnowhere.json,1\n").unwrap();
    let err = e.fails(&["triage", "eval", "--labels", labels.to_str().unwrap()]);
    assert!(err.contains("document `nowhere.json` not found"), "{err}");
}

#[test]
fn overrides_are_stored_shown_and_audited() {
    let e = Env::new("");
    e.ok(&["analyst", "add", "alice"]);
    e.ok(&["collect", "--once", "medical"]);
    let cands: serde_json::Value = serde_json::from_str(&e.ok(&["candidates", "--json"])).unwrap();
    let id = cands["candidates"][0]["advisory"]["id"].as_str().unwrap().to_owned();
    let before = cands["candidates"].as_array().unwrap().len();
    let err = e.fails(&["advisory", "override", &id, "--as", "alice", "--relevant", "false", "--reason", ""]);
    assert!(err.contains("a reason is required"), "{err}");
    let out = e.ok(&[
        "advisory",
        "override",
        &id,
        "--as",
        "alice",
        "--relevant",
        "false",
        "--level",
        "Low",
        "--reason",
        "not deployed in any subscriber",
    ]);
    assert!(
        out.contains("relevant false, Low (overridden by alice: not deployed in any subscriber)"),
        "{out}"
    );
    let after: serde_json::Value = serde_json::from_str(&e.ok(&["candidates", "--json"])).unwrap();
    assert_eq!(after["candidates"].as_array().unwrap().len(), before - 1);
    let shown: serde_json::Value = serde_json::from_str(&e.ok(&["advisory", "show", &id])).unwrap();
    assert_eq!(shown["override"]["analyst"], "alice");
    assert_eq!(shown["assessment"]["relevant"], false);
    let log = e.ok(&["audit", "list"]);
    assert!(log.contains("triage.override") && log.contains(&id), "{log}");
    // The user, then the override.
    assert!(log.contains("user.create"), "{log}");
    assert!(e.ok(&["audit", "verify"]).contains("audit log intact: 2 entries"));
}

#[test]
fn latency_benchmark_runs_and_reports() {
    // Not a timing assertion: the command must work and print its numbers.
    let e = Env::new("");
    let out = e.ok(&["bench", "latency", "--bulletins", "3"]);
    assert!(
        out.starts_with("approval to first delivery (Sqlite, 3 bulletins, one webhook each): p50 "),
        "{out}"
    );
    assert!(out.contains(" ms, p99 ") && out.contains(" ms, max "), "{out}");
    let err = e.fails(&["bench", "latency", "--bulletins", "0"]);
    assert!(err.contains("--bulletins must be at least 1"), "{err}");
}
