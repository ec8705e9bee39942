//! The `broadcast` command line.

use crate::app::App;
use crate::config::Settings;
use anyhow::{Context, Result, bail};
use broadcast_core::{Action, AdvisoryId, BulletinState, Role, ThreatLevel, Tlp};
use broadcast_store::CandidateFilter;
use chrono::Utc;
use clap::{Parser, Subcommand};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "broadcast", version, about = "Threat-bulletin broadcast for health and social care")]
pub struct Cli {
    /// Configuration file (layered over the built-in defaults; BROADCAST_* variables override both).
    #[arg(short, long, global = true, env = "BROADCAST_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the roles switched on in config (api, collector, worker) until stopped.
    Run,
    /// Apply database migrations and exit.
    Migrate,
    /// Check the configuration (cron expressions, templates, URLs, watchlist) and exit.
    CheckConfig,
    /// Load organisations, contacts, endpoints and analysts from a seed file.
    Seed { file: PathBuf },
    /// Manage analysts and their API tokens.
    #[command(subcommand)]
    Analyst(AnalystCmd),
    /// Console users: create one with a password (e.g. the first admin), or set a password.
    #[command(subcommand)]
    User(UserCmd),
    /// List candidates: assessed advisories, most relevant first.
    Candidates {
        /// Include advisories triage found irrelevant.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show an advisory, or override triage's verdict on it.
    #[command(subcommand)]
    Advisory(AdvisoryCmd),
    /// The hash-chained audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Draft, review and publish bulletins.
    #[command(subcommand)]
    Bulletin(BulletinCmd),
    /// Manage subscribing organisations.
    #[command(subcommand)]
    Org(OrgCmd),
    /// Add an email contact to an organisation.
    #[command(subcommand)]
    Contact(ContactCmd),
    /// Add a webhook endpoint to an organisation.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Webhook signing keys.
    #[command(subcommand)]
    Webhook(WebhookCmd),
    /// Delivery states of a bulletin.
    Deliveries {
        bulletin: String,
        #[arg(long)]
        json: bool,
    },
    /// Send a delivery again (same id), or every failed delivery of an endpoint since a time.
    Replay {
        /// A delivery id (dlv_…).
        delivery: Option<String>,
        /// An endpoint id (ep_…): replay its failed deliveries.
        #[arg(long, conflicts_with = "delivery")]
        endpoint: Option<String>,
        /// With --endpoint: only deliveries created at or after this time (RFC 3339).
        #[arg(long, requires = "endpoint")]
        since: Option<String>,
    },
    /// Feeds and their health.
    Feeds {
        #[arg(long)]
        json: bool,
    },
    /// Measure triage against labelled documents.
    #[command(subcommand)]
    Triage(TriageCmd),
    /// Benchmarks that print numbers (see docs/PERFORMANCE.md).
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Collect feeds now, outside their schedule.
    Collect {
        /// Run this feed once (by id).
        #[arg(long)]
        once: String,
    },
}

#[derive(Subcommand)]
pub enum AdvisoryCmd {
    /// The advisory, its revisions and its assessment.
    Show { id: String },
    /// Correct triage's verdict on the current revision (stored and audited).
    Override {
        id: String,
        #[arg(long = "as")]
        actor: String,
        #[arg(long)]
        relevant: Option<bool>,
        #[arg(long)]
        level: Option<String>,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Recompute the chain; fails naming the first edited, inserted or deleted entry.
    Verify,
    /// Print entries after a sequence number.
    List {
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
}

#[derive(Subcommand)]
pub enum TriageCmd {
    /// Precision, recall, F1 and the confusion matrix over a labels CSV of CSAF documents
    /// (columns `file` and `label`, paths relative to the CSV), listing misses with reasons.
    Eval {
        #[arg(long)]
        labels: PathBuf,
        /// Exit non-zero if recall is below this.
        #[arg(long)]
        require_recall: Option<f64>,
        /// Exit non-zero if precision is below this.
        #[arg(long)]
        require_precision: Option<f64>,
    },
}

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Triage throughput on synthetic data, one thread.
    Triage {
        #[arg(long, default_value_t = 100_000)]
        advisories: usize,
        #[arg(long, default_value_t = 10_000)]
        watchlist: usize,
        /// A folder of CSAF documents to use as advisories (e.g. ../shared/corpus/csaf/cisa);
        /// the configured watchlist is then padded with synthetic names.
        #[arg(long)]
        corpus: Option<PathBuf>,
    },
    /// Approval to first delivery, p50 and p99, with the real worker and a local receiver.
    Latency {
        #[arg(long, default_value_t = 200)]
        bulletins: usize,
        /// Store to measure on (default: a throwaway SQLite file), e.g. postgres://…/db.
        #[arg(long)]
        store: Option<String>,
    },
    /// One bulletin to many recipients: emails into Postfix's smtp-sink (compared with
    /// smtp-source) or signed webhooks to a verifying receiver (compared with wrk).
    Throughput {
        #[arg(long, value_enum)]
        channel: crate::delivery_bench::BenchChannel,
        #[arg(long, default_value_t = 10_000)]
        recipients: usize,
        /// Store to measure on (default: a throwaway SQLite file), e.g. postgres://…/db.
        #[arg(long)]
        store: Option<String>,
    },
    /// Parse and store every advisory file under a folder (e.g. ../shared/corpus): documents/s
    /// and MB/s per format, parse and store separately.
    Ingest {
        dir: PathBuf,
        /// Store to measure on (default: a throwaway SQLite file), e.g. postgres://…/db.
        #[arg(long)]
        store: Option<String>,
        /// Only RSS/Atom parsing, this many rounds (compare with scripts/bench-feedparser.py).
        #[arg(long)]
        rss_rounds: Option<usize>,
    },
}

#[derive(Subcommand)]
pub enum AnalystCmd {
    /// Create an analyst and print their API token (shown once).
    Add {
        name: String,
        #[arg(long, default_value = "analyst", value_parser = ["analyst", "approver", "admin"])]
        role: String,
    },
    /// Replace an analyst's API token and print the new one.
    Token {
        name: String,
    },
    List,
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create a user who signs in to the console. The password is read from standard input
    /// (one line); on a terminal a strong one is generated and printed once instead.
    Add {
        name: String,
        #[arg(long, default_value = "analyst", value_parser = ["analyst", "approver", "admin"])]
        role: String,
    },
    /// Set (or replace) a user's console password, read like `user add`'s; their sessions end.
    Password { name: String },
}

#[derive(Subcommand)]
pub enum BulletinCmd {
    /// Draft a bulletin from advisories.
    Draft {
        /// Advisory ids (adv_…).
        advisories: Vec<String>,
        /// The analyst writing it.
        #[arg(long = "as")]
        actor: String,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        tlp: Option<String>,
        #[arg(long)]
        level: Option<String>,
    },
    Submit(ActArgs),
    Recall(ActArgs),
    Approve(ActArgs),
    Reject(ActArgs),
    Reopen(ActArgs),
    Publish(ActArgs),
    Withdraw(ActArgs),
    Show {
        bulletin: String,
    },
    List {
        #[arg(long)]
        state: Option<String>,
    },
    /// Render the email (text) as a recipient would see it.
    Preview {
        bulletin: String,
    },
}

#[derive(clap::Args)]
pub struct ActArgs {
    /// Bulletin id or reference (HCB-2026-0042).
    bulletin: String,
    #[arg(long = "as")]
    actor: String,
    #[arg(long)]
    comment: Option<String>,
}

#[derive(Subcommand)]
pub enum OrgCmd {
    Add {
        name: String,
        /// Most restrictive TLP the organisation may receive.
        #[arg(long, default_value = "GREEN")]
        tlp_clearance: String,
        /// Bulletins below this level are not sent to it.
        #[arg(long, default_value = "Information")]
        min_level: String,
    },
    List,
    Show {
        org: String,
    },
    /// Set the vendors and products an organisation runs; bulletins about none of them are
    /// not sent to it. No names: every bulletin again.
    Interests {
        org: String,
        names: Vec<String>,
    },
    /// Email an organisation's contacts one digest a day at HOUR (UTC), or (`--off`) each
    /// bulletin at once. Webhooks are always immediate.
    Digest {
        org: String,
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=23), conflicts_with = "off", required_unless_present = "off")]
        hour: Option<u8>,
        #[arg(long)]
        off: bool,
    },
    /// Issue the organisation's token for reporting incidents (`POST /api/incidents`),
    /// printed once; the previous one stops working.
    IncidentToken {
        org: String,
    },
}

#[derive(Subcommand)]
pub enum ContactCmd {
    Add {
        /// Organisation id or name.
        org: String,
        email: String,
        #[arg(long, default_value = "")]
        name: String,
    },
}

#[derive(Subcommand)]
pub enum WebhookCmd {
    /// Make a new ed25519 key for `v1a` signatures: prints the signing key (for
    /// `webhook.signing_key`, keep it secret) and the public key (for receivers).
    Keygen,
}

#[derive(Subcommand)]
pub enum EndpointCmd {
    /// Register a webhook URL; prints the signing secret (shown once) unless one is given.
    Add {
        org: String,
        url: String,
        #[arg(long)]
        secret: Option<String>,
        /// broadcast (Broadcast's JSON, default), slack or teams.
        #[arg(long, default_value = "broadcast")]
        format: String,
    },
    /// Replace the signing secret (printed once); the old one keeps signing during the overlap.
    Rotate {
        id: String,
        #[arg(long, default_value_t = 24)]
        overlap_hours: i64,
    },
    /// Send to this endpoint again.
    Enable { id: String },
    /// Stop sending to this endpoint; its pending deliveries are suppressed.
    Disable {
        id: String,
        #[arg(long, default_value = "disabled by the operator")]
        reason: String,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(cli: Cli) -> Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    if matches!(cli.command, Command::Webhook(WebhookCmd::Keygen)) {
        let seed: [u8; 32] = rand::random();
        let key = broadcast_distribute::sign::AsymmetricKey::generate(&seed);
        let public = broadcast_distribute::sign::AsymmetricKey::parse(&key)?.public_key();
        println!(
            "signing key (set as webhook.signing_key or BROADCAST_WEBHOOK__SIGNING_KEY; keep it secret):"
        );
        println!("  {key}");
        println!("public key (give to receivers; also served at /api/webhooks/public-key):");
        println!("  {public}");
        return Ok(());
    }
    if matches!(cli.command, Command::CheckConfig) {
        settings.validate()?;
        println!("configuration is valid ({} feeds)", settings.feeds.len());
        return Ok(());
    }
    match &cli.command {
        Command::Bench(BenchCmd::Triage { advisories, watchlist, corpus }) => {
            let base = match corpus {
                Some(_) => Some(settings.watchlist()?),
                None => None,
            };
            return crate::triage_tools::bench(*advisories, *watchlist, corpus.as_deref(), base.as_ref());
        }
        Command::Bench(BenchCmd::Throughput { channel, recipients, store }) => {
            if *recipients == 0 {
                bail!("--recipients must be at least 1");
            }
            let mut s = settings.clone();
            if s.security.link_secret.len() < 32 {
                s.security.link_secret = "benchmark-only-link-secret-0123456789".into();
            }
            s.validate()?;
            return crate::delivery_bench::throughput(s, *channel, *recipients, store.clone()).await;
        }
        Command::Bench(BenchCmd::Ingest { dir, store, rss_rounds }) => {
            if let Some(rounds) = rss_rounds {
                return crate::ingest_bench::rss_only(dir, (*rounds).max(1));
            }
            return crate::ingest_bench::ingest(settings.clone(), dir, store.clone()).await;
        }
        Command::Bench(BenchCmd::Latency { bulletins, store }) => {
            if *bulletins == 0 {
                bail!("--bulletins must be at least 1");
            }
            // Unsubscribe links are not used by the benchmark: it needs no secret of the operator's.
            let mut s = settings.clone();
            if s.security.link_secret.len() < 32 {
                s.security.link_secret = "benchmark-only-link-secret-0123456789".into();
            }
            s.validate()?;
            return crate::delivery_bench::latency(s, *bulletins, store.clone()).await;
        }
        Command::Triage(TriageCmd::Eval { labels, require_recall, require_precision }) => {
            let rules = settings.triage_rules()?;
            let (c, rows) = crate::triage_tools::evaluate(labels, &rules)?;
            crate::triage_tools::print_report(labels, &c, &rows);
            if require_recall.is_some_and(|r| c.recall() < r)
                || require_precision.is_some_and(|p| c.precision() < p)
            {
                bail!("below the required recall/precision");
            }
            return Ok(());
        }
        _ => {}
    }
    settings.validate()?;
    let app = App::open(settings).await?;
    let now = Utc::now();
    match cli.command {
        Command::CheckConfig | Command::Bench(_) | Command::Triage(_) | Command::Webhook(_) => {
            unreachable!("handled above")
        }
        Command::Run => run(app.clone()).await?,
        Command::Migrate => println!("migrations applied ({:?})", app.store.kind()),
        Command::Seed { file } => {
            let seed = crate::seed::read(&file)?;
            let r = crate::seed::apply(&app.store, &seed).await?;
            println!(
                "seeded: {} analysts, {} organisations, {} contacts, {} endpoints added",
                r.analysts, r.organisations, r.contacts, r.endpoints
            );
        }
        Command::Analyst(cmd) => match cmd {
            AnalystCmd::Add { name, role } => {
                let role: Role = role.parse().map_err(anyhow::Error::msg)?;
                let token = crate::auth::generate_token();
                let a = app.store.create_analyst(&name, role, &crate::auth::hash_token(&token), now).await?;
                eprintln!("created {} ({}) as {}; API token (shown once):", a.name, a.role, a.id);
                println!("{token}");
            }
            AnalystCmd::Token { name } => {
                let token = crate::auth::generate_token();
                app.store.set_analyst_token(&name, &crate::auth::hash_token(&token)).await?;
                eprintln!("new API token for {name} (the old one no longer works):");
                println!("{token}");
            }
            AnalystCmd::List => {
                for a in app.store.list_analysts().await? {
                    println!("{:<24} {:<9} {}", a.name, a.role, a.id);
                }
            }
        },
        Command::User(cmd) => {
            let (name, role) = match &cmd {
                UserCmd::Add { name, role } => {
                    (name.clone(), Some(role.parse::<Role>().map_err(anyhow::Error::msg)?))
                }
                UserCmd::Password { name } => (name.clone(), None),
            };
            let (password, generated) = read_password()?;
            let hash = crate::auth::hash_password(&password).map_err(anyhow::Error::msg)?;
            if let Some(role) = role {
                // An API token is issued too (unused until `analyst token` shows a new one).
                let token = crate::auth::generate_token();
                app.store.create_analyst(&name, role, &crate::auth::hash_token(&token), now).await?;
            }
            app.store.set_analyst_password(&name, Some(&hash), "operator", now).await?;
            match role {
                Some(r) => eprintln!("created console user {name} ({r})"),
                None => eprintln!("password set for {name}; their sessions have ended"),
            }
            if generated {
                eprintln!("password (shown once):");
                println!("{password}");
            }
        }
        Command::Candidates { all, json } => {
            let list =
                app.store.list_candidates(&CandidateFilter { include_irrelevant: all, limit: None }).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&json!({ "candidates": list }))?);
            } else if list.is_empty() {
                println!("no candidates yet");
            } else {
                // Bursts for one vendor/product are shown once, with a count and the worst on top.
                let groups = app.group_candidates(&list);
                let folded: std::collections::HashSet<String> = groups
                    .iter()
                    .filter(|g| g.count > 1)
                    .flat_map(|g| g.members.iter().skip(1).map(|m| m.id.clone()))
                    .collect();
                for g in groups.iter().filter(|g| g.count > 1) {
                    println!(
                        "[{} advisories for {}; the worst is listed below, `--json` lists them all]",
                        g.count, g.key
                    );
                }
                for c in list.into_iter().filter(|c| !folded.contains(c.advisory.id.as_str())) {
                    println!(
                        "{:>6.2}  {:<11} {}  {}\n        {}",
                        c.assessment.score,
                        c.assessment.threat_level,
                        c.advisory.id,
                        c.advisory.content.title,
                        c.assessment.reasons.join("; ")
                    );
                }
            }
        }
        Command::Advisory(AdvisoryCmd::Show { id }) => {
            let id: AdvisoryId = id.parse()?;
            let adv = app.store.get_advisory(&id).await?;
            let candidate = app.store.candidate(&id).await?;
            let revisions = app.store.advisory_revisions(&id).await?;
            let (assessment, override_info) = match candidate {
                Some(c) => (Some(c.assessment), c.override_info),
                None => (None, None),
            };
            let shown = json!({ "advisory": adv, "assessment": assessment, "override": override_info, "revisions": revisions });
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        Command::Advisory(AdvisoryCmd::Override { id, actor, relevant, level, reason }) => {
            let id: AdvisoryId = id.parse()?;
            let analyst = app.store.analyst_by_name(&actor).await?;
            let level: Option<ThreatLevel> = level.as_deref().map(str::parse).transpose()?;
            let c = app.store.override_assessment(&id, relevant, level, &reason, &analyst.id, now).await?;
            println!(
                "{}: relevant {}, {} ({})",
                c.advisory.id, c.assessment.relevant, c.assessment.threat_level, c.assessment.reasons[0]
            );
        }
        Command::Audit(AuditCmd::Verify) => {
            let check = app.store.verify_audit().await?;
            match check.broken {
                None => println!("audit log intact: {} entries, every hash chains", check.entries),
                Some((seq, why)) => {
                    bail!(
                        "audit log broken at entry {seq}: {why} ({} entries check out before it)",
                        check.entries
                    )
                }
            }
        }
        Command::Audit(AuditCmd::List { after, limit }) => {
            for e in app.store.audit_entries(after, limit).await? {
                println!(
                    "{:>6}  {}  {:<22} {:<36} {:<20} {}",
                    e.seq,
                    e.at.to_rfc3339(),
                    e.action,
                    e.actor,
                    e.subject,
                    e.details
                );
            }
        }
        Command::Bulletin(cmd) => bulletin(&app, cmd).await?,
        Command::Org(cmd) => match cmd {
            OrgCmd::Add { name, tlp_clearance, min_level } => {
                let tlp: Tlp = tlp_clearance.parse()?;
                let level: ThreatLevel = min_level.parse()?;
                let o = app.store.create_organisation_by("operator", &name, tlp, level, now).await?;
                println!("{}", o.id);
            }
            OrgCmd::List => {
                for o in app.store.list_organisations().await? {
                    println!(
                        "{:<40} {:<13} min {:<11} {}",
                        o.name,
                        o.tlp_clearance.to_string(),
                        o.min_threat_level,
                        o.id
                    );
                }
            }
            OrgCmd::Interests { org, names } => {
                let o = app.store.set_organisation_interests(&org, &names, "operator", now).await?;
                if o.interests.is_empty() {
                    println!("{} receives every bulletin", o.name);
                } else {
                    println!("{} receives bulletins about: {}", o.name, o.interests.join(", "));
                }
            }
            OrgCmd::IncidentToken { org } => {
                let token = format!("bit_{}", crate::auth::generate_token().trim_start_matches("bct_"));
                let o = app
                    .store
                    .set_org_incident_token(&org, &crate::auth::hash_token(&token), "operator", now)
                    .await?;
                eprintln!("incident token for {} (shown once; the previous one no longer works):", o.name);
                println!("{token}");
            }
            OrgCmd::Digest { org, hour, off: _ } => {
                let o = app.store.set_organisation_digest(&org, hour, "operator", now).await?;
                match o.digest_hour {
                    Some(h) => println!("{} gets one email digest a day at {h:02}:00 UTC", o.name),
                    None => println!("{} gets each bulletin by email as soon as it is published", o.name),
                }
            }
            OrgCmd::Show { org } => {
                let o = app.store.get_organisation(&org).await?;
                let contacts = app.store.list_contacts(&o.id).await?;
                let endpoints = app.store.list_endpoints(&o.id).await?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({ "organisation": o, "contacts": contacts, "endpoints": endpoints })
                    )?
                );
            }
        },
        Command::Contact(ContactCmd::Add { org, email, name }) => {
            let c = app.store.add_contact_by("operator", &org, &email, &name, now).await?;
            println!("{}", c.id);
        }
        Command::Endpoint(EndpointCmd::Rotate { id, overlap_hours }) => {
            if !(0..=24 * 30).contains(&overlap_hours) {
                bail!("--overlap-hours {overlap_hours} must be between 0 and 720");
            }
            let secret = broadcast_distribute::sign::secret_from_bytes(&crate::auth::random_secret_bytes());
            let until = Utc::now() + chrono::Duration::hours(overlap_hours);
            let ep = app.store.rotate_endpoint_secret(&id.parse()?, &secret, until, "operator", now).await?;
            eprintln!("new signing secret for {} (shown once); the old one also signs until {until}:", ep.id);
            println!("{secret}");
        }
        Command::Endpoint(EndpointCmd::Add { org, url, secret, format }) => {
            let format: broadcast_core::EndpointFormat = format.parse().map_err(anyhow::Error::msg)?;
            let show = secret.is_none();
            let (ep, secret) =
                app.register_endpoint("operator", &org, &url, secret, format).await.map_err(|e| match e {
                    crate::app::RegisterError::Invalid(m) => anyhow::anyhow!(m),
                    crate::app::RegisterError::Store(e) => e.into(),
                })?;
            println!("{}", ep.id);
            if show {
                eprintln!("signing secret (shown once; give it to the receiver):");
                println!("{secret}");
            }
        }
        Command::Endpoint(EndpointCmd::Enable { id }) => {
            let ep = app
                .store
                .set_endpoint_enabled(&id.parse()?, true, "operator", "enabled by the operator", now)
                .await?;
            println!("{} enabled", ep.id);
        }
        Command::Endpoint(EndpointCmd::Disable { id, reason }) => {
            let ep = app.store.set_endpoint_enabled(&id.parse()?, false, "operator", &reason, now).await?;
            println!("{} disabled", ep.id);
        }
        Command::Replay { delivery, endpoint, since } => match (delivery, endpoint) {
            (Some(d), None) => {
                let d = app.store.replay_delivery(&d.parse()?, "operator", now).await?;
                println!("{} queued again ({} attempts so far; a running worker sends it)", d.id, d.attempts);
            }
            (None, Some(ep)) => {
                let since = match since {
                    Some(s) => chrono::DateTime::parse_from_rfc3339(&s)
                        .map_err(|e| anyhow::anyhow!("--since `{s}` is not an RFC 3339 time: {e}"))?
                        .with_timezone(&Utc),
                    None => chrono::DateTime::UNIX_EPOCH,
                };
                let ids = app.store.replay_failed_for_endpoint(&ep.parse()?, since, "operator", now).await?;
                println!("{} failed deliveries queued again", ids.len());
            }
            _ => bail!("name a delivery, or --endpoint with an optional --since"),
        },
        Command::Deliveries { bulletin, json } => {
            let b = app.store.get_bulletin(&bulletin).await?;
            let counts = app.store.delivery_counts(&b.id).await?;
            let rows = app.store.deliveries_for_bulletin(&b.id).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({ "bulletin": b.reference, "counts": counts, "deliveries": rows })
                    )?
                );
            } else {
                let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
                println!("{} ({}): {}", b.reference, b.state, summary.join(", "));
                for d in rows {
                    println!(
                        "  {:<10} {:<8} {:<45} attempts {}  {}",
                        d.state.to_string(),
                        d.channel.to_string(),
                        d.address,
                        d.attempts,
                        d.reason.unwrap_or_default()
                    );
                }
            }
        }
        Command::Feeds { json } => {
            let states = app.store.list_feed_states().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&json!({ "feeds": states }))?);
            } else {
                for f in &app.settings.feeds {
                    let st = states.iter().find(|s| s.feed_id == f.id());
                    let health = match st {
                        None => "never run".to_owned(),
                        Some(s) if s.consecutive_failures > 0 => format!(
                            "FAILING ({} in a row): {}",
                            s.consecutive_failures,
                            s.last_error.clone().unwrap_or_default()
                        ),
                        Some(s) => format!(
                            "ok, last success {} ({} ago), {} items{}",
                            s.last_success.map(|t| t.to_rfc3339()).unwrap_or_default(),
                            s.last_success.map(|t| human_age(Utc::now() - t)).unwrap_or_default(),
                            s.items_seen,
                            s.cursor.as_deref().map(|c| format!(", cursor {c}")).unwrap_or_default()
                        ),
                    };
                    println!("{:<24} {:<16} {}", f.id(), f.schedule_expr(), health);
                }
            }
        }
        Command::Collect { once } => {
            let cfg = app
                .settings
                .feeds
                .iter()
                .find(|f| f.id() == once)
                .with_context(|| format!("no feed `{once}` in the configuration"))?;
            let cfg = crate::stages::collector::resolve(&app, cfg);
            let feed = cfg.build()?;
            let runner = crate::stages::collector::runner(&app)?;
            // A backfill shows its documents on a terminal (hidden when stderr is not one).
            let bar = indicatif::ProgressBar::new(0).with_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {pos}/{len} (documents or NVD windows), {eta} left",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar.set_message(once.clone());
            let progress = |done: usize, total: usize| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            };
            let r = crate::stages::collector::collect_once_with(&app, &runner, &feed, &progress)
                .await
                .map_err(anyhow::Error::msg)?;
            bar.finish_and_clear();
            let assessed = crate::stages::triage::assess_pending(&app).await?;
            println!(
                "{once}: {} new, {} revised, {} unchanged, {} refused{}{}; {assessed} assessed",
                r.new,
                r.revised,
                r.unchanged,
                r.refused,
                if r.kev_listings > 0 || r.kev_marked > 0 {
                    format!(
                        "; {} KEV listings new or changed, {} advisories marked",
                        r.kev_listings, r.kev_marked
                    )
                } else {
                    String::new()
                },
                if r.not_modified { " (not modified)" } else { "" }
            );
            if r.remaining > 0 {
                println!(
                    "{once}: {} more documents to fetch: run it again (or let the schedule)",
                    r.remaining
                );
            }
        }
    }
    app.store.close().await;
    Ok(())
}

async fn bulletin(app: &App, cmd: BulletinCmd) -> Result<()> {
    let act = |args: &ActArgs, action: Action| {
        (args.bulletin.clone(), args.actor.clone(), args.comment.clone(), action)
    };
    let (key, actor, comment, action) = match &cmd {
        BulletinCmd::Draft { advisories, actor, title, tlp, level } => {
            let author = app.store.analyst_by_name(actor).await?;
            let ids: Vec<AdvisoryId> = advisories.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
            let overrides = crate::app::DraftOverrides {
                title: title.clone(),
                tlp: tlp.as_deref().map(str::parse).transpose()?,
                threat_level: level.as_deref().map(str::parse).transpose()?,
                ..Default::default()
            };
            let b = app.draft_bulletin(&author.id, &ids, overrides).await?;
            println!("{} {}", b.reference, b.id);
            return Ok(());
        }
        BulletinCmd::Show { bulletin } => {
            let b = app.store.get_bulletin(bulletin).await?;
            let history = app.store.bulletin_events(&b.id).await?;
            println!("{}", serde_json::to_string_pretty(&json!({ "bulletin": b, "history": history }))?);
            return Ok(());
        }
        BulletinCmd::List { state } => {
            let state: Option<BulletinState> =
                state.as_deref().map(str::parse).transpose().map_err(anyhow::Error::msg)?;
            for b in app.store.list_bulletins(state).await? {
                println!(
                    "{:<15} {:<10} {:<11} {}",
                    b.reference, b.state, b.content.threat_level, b.content.title
                );
            }
            return Ok(());
        }
        BulletinCmd::Preview { bulletin } => {
            let b = app.store.get_bulletin(bulletin).await?;
            let ctx = app.preview_context(&b);
            let e = app.renderer.render_email("bulletin", &ctx)?;
            println!("Subject: {}\n\n{}", e.subject, e.text);
            return Ok(());
        }
        BulletinCmd::Submit(a) => act(a, Action::Submit),
        BulletinCmd::Recall(a) => act(a, Action::Recall),
        BulletinCmd::Approve(a) => act(a, Action::Approve),
        BulletinCmd::Reject(a) => act(a, Action::Reject),
        BulletinCmd::Reopen(a) => act(a, Action::Reopen),
        BulletinCmd::Publish(a) => act(a, Action::Publish),
        BulletinCmd::Withdraw(a) => act(a, Action::Withdraw),
    };
    let analyst = app.store.analyst_by_name(&actor).await?;
    let t =
        app.act_on_bulletin(&analyst, &key, action, comment.as_deref(), None).await.map_err(|e| match e {
            crate::app::ActError::Forbidden(m) => anyhow::anyhow!(m),
            crate::app::ActError::Store(e) => e.into(),
        })?;
    print!("{} is now {}", t.bulletin.reference, t.bulletin.state);
    if action == Action::Publish {
        print!("; {} deliveries queued (a running worker sends them)", t.deliveries_created);
    }
    if t.deliveries_cancelled > 0 {
        print!("; {} pending deliveries cancelled", t.deliveries_cancelled);
    }
    println!();
    Ok(())
}

/// Below this many open files, a fan-out to thousands of distinct webhook hosts can run out.
const OPEN_FILES_WANTED: u64 = 8192;

/// Raises this process's open-file limit (soft) to its hard limit and returns it. A fan-out
/// to many distinct webhook hosts keeps each host's connection open (idle, for reuse) for up
/// to 20 s, one file each; systemd's default soft limit is 1,024.
fn raise_open_file_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// Runs the configured roles until SIGINT or SIGTERM.
async fn run(app: App) -> Result<()> {
    match raise_open_file_limit() {
        Ok(n) if n < OPEN_FILES_WANTED => tracing::warn!(
            limit = n,
            "open-file limit is low: a fan-out to thousands of distinct webhook hosts needs a file per host; raise it (systemd: LimitNOFILE=65536)"
        ),
        Ok(n) => tracing::info!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not read or raise the open-file limit"),
    }
    if let Some(seed) = &app.settings.seed_file {
        let path = app.settings.path(seed);
        let s = crate::seed::read(&path)?;
        let r = crate::seed::apply(&app.store, &s).await?;
        tracing::info!(file = %path.display(), organisations = r.organisations, contacts = r.contacts, analysts = r.analysts, "seed applied");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let roles = app.settings.roles.clone();
    let mut tasks = tokio::task::JoinSet::new();
    if roles.api {
        let listen = app.settings.api.listen.clone();
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("api.listen: cannot listen on {listen}"))?;
        tracing::info!(address = %listener.local_addr()?, public_url = %app.settings.api.public_url, "API listening");
        if !crate::console::secure_cookies(&app.settings.api.public_url) {
            tracing::warn!(
                public_url = %app.settings.api.public_url,
                "api.public_url is plain http on another host: console session cookies cannot be Secure; serve the console over https"
            );
        }
        let router = crate::api::router(app.clone()).layer(tower_http::trace::TraceLayer::new_for_http());
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>())
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await
                .context("API server")
        });
    }
    if roles.collector {
        tasks.spawn(crate::stages::collector::run(app.clone(), stop_rx.clone()));
    }
    if roles.worker {
        tasks.spawn(crate::stages::triage::run(app.clone(), stop_rx.clone()));
        tasks.spawn(crate::stages::delivery::run(app.clone(), stop_rx.clone()));
    }
    tracing::info!(api = roles.api, collector = roles.collector, worker = roles.worker, store = ?app.store.kind(), "broadcast running");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        Some(res) = tasks.join_next() => {
            // A role ended on its own: that is an error worth stopping for.
            let _ = stop_tx.send(true);
            match res {
                Ok(Ok(())) => bail!("a role stopped unexpectedly"),
                Ok(Err(e)) => return Err(e),
                Err(e) => bail!("a role panicked: {e}"),
            }
        }
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    while let Some(res) = tasks.join_next().await {
        if let Ok(Err(e)) = res {
            tracing::warn!(error = %format!("{e:#}"), "role ended with an error");
        }
    }
    Ok(())
}

/// A console password from standard input (one line), or, on a terminal, a generated one.
fn read_password() -> Result<(String, bool)> {
    use std::io::{BufRead, IsTerminal};
    if std::io::stdin().is_terminal() {
        let mut bytes = [0u8; 18];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        return Ok((base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes), true));
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("cannot read the password from standard input")?;
    let pw = line.trim_end_matches(['\r', '\n']).to_owned();
    if pw.is_empty() {
        bail!(
            "no password on standard input (pipe one in, e.g. `printf %s \"$PW\" | broadcast user add NAME`)"
        );
    }
    Ok((pw, false))
}

/// `3 h`, `2 d`, `45 min`.
fn human_age(d: chrono::Duration) -> String {
    match d.num_minutes() {
        m if m < 90 => format!("{} min", m.max(0)),
        m if m < 48 * 60 => format!("{} h", m / 60),
        m => format!("{} d", m / (24 * 60)),
    }
}

#[cfg(test)]
mod tests {
    /// A process started with a low soft limit (systemd's default is 1,024) gets its hard limit.
    /// Each test runs in its own process under nextest, so lowering this one's limit is safe.
    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        let (_, hard) = rlimit::Resource::NOFILE.get().unwrap();
        assert!(hard > 256, "this machine's hard limit is {hard}");
        rlimit::Resource::NOFILE.set(256, hard).unwrap();
        assert_eq!(super::raise_open_file_limit().unwrap(), hard);
        assert_eq!(rlimit::Resource::NOFILE.get().unwrap(), (hard, hard));
    }
}
