//! Collector: runs each feed on its cron schedule (and once at start-up), and stores what
//! it returns as advisories or revisions.

use crate::app::App;
use crate::stages::sleep_or_shutdown;
use broadcast_collect::{FeedConfig, FetchOutcome, Runner, RunnerConfig, Source, Validators};
use broadcast_store::Change;
use chrono::Utc;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What one run of one feed did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct CollectReport {
    pub not_modified: bool,
    pub new: usize,
    pub revised: usize,
    pub unchanged: usize,
    pub refused: usize,
    /// KEV listings new or changed in this run.
    pub kev_listings: usize,
    /// Advisories a KEV listing marked (each a new revision, assessed again).
    pub kev_marked: usize,
    /// Documents still to fetch on later runs (a CSAF backfill in steps).
    pub remaining: usize,
}

pub fn runner(app: &App) -> anyhow::Result<Runner> {
    let c = &app.settings.collect;
    Ok(Runner::new(RunnerConfig {
        timeout: Duration::from_secs(c.timeout_secs),
        connect_timeout: Duration::from_secs(c.connect_timeout_secs),
        max_body_bytes: c.max_body_bytes,
        ..RunnerConfig::default()
    })?)
}

/// Makes `file:` feed URLs relative to the working directory absolute.
pub fn resolve(app: &App, cfg: &FeedConfig) -> FeedConfig {
    let mut cfg = cfg.clone();
    if let FeedConfig::Csaf(c) = &mut cfg
        && let Some(k) = &c.openpgp_key_file
    {
        c.openpgp_key_file = Some(app.settings.path(k).display().to_string());
    }
    let url = cfg.url_mut();
    if let Some(rest) = url.strip_prefix("file:")
        && !rest.starts_with('/')
    {
        *url = format!("file://{}", app.settings.path(rest).display());
    }
    cfg
}

/// Runs one feed once: fetch (conditionally), parse, store, record health.
pub async fn collect_once(app: &App, runner: &Runner, feed: &Source) -> Result<CollectReport, String> {
    collect_once_with(app, runner, feed, &|_, _| {}).await
}

/// [`collect_once`], reporting documents done as it goes (the CLI's progress bar).
pub async fn collect_once_with(
    app: &App,
    runner: &Runner,
    feed: &Source,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<CollectReport, String> {
    let id = feed.id();
    let state = app.store.feed_state(id).await.map_err(|e| e.to_string())?.unwrap_or_default();
    let validators = Validators { etag: state.etag, last_modified: state.last_modified };
    let outcome = match feed.run(runner, &validators, state.cursor.as_deref(), progress).await {
        Ok(o) => o,
        Err(e) => {
            let msg = e.to_string();
            tracing::warn!(source.id = id, error = %msg, "feed fetch failed");
            let _ = app.store.record_feed_failure(id, &msg, Utc::now()).await;
            return Err(msg);
        }
    };
    let mut report = CollectReport::default();
    match outcome {
        FetchOutcome::NotModified => {
            report.not_modified = true;
            app.store.record_feed_success(id, None, 0, Utc::now()).await.map_err(|e| e.to_string())?;
        }
        FetchOutcome::Fetched { parsed, validators, bytes, pages, cursor, remaining } => {
            report.remaining = remaining;
            for why in &parsed.refused {
                tracing::warn!(source.id = id, reason = %why, "feed item refused");
            }
            report.refused = parsed.refused.len();
            for item in &parsed.items {
                match app.store_advisory(item, Utc::now()).await {
                    Ok(u) => match u.change {
                        Change::New => report.new += 1,
                        Change::Revised => report.revised += 1,
                        Change::Unchanged => report.unchanged += 1,
                    },
                    Err(e) => {
                        let msg = format!("storing `{}`: {e}", item.external_id);
                        let _ = app.store.record_feed_failure(id, &msg, Utc::now()).await;
                        return Err(msg);
                    }
                }
            }
            if !parsed.kev.is_empty() {
                let applied = app.store.apply_kev(&parsed.kev, Utc::now()).await.map_err(|e| {
                    let msg = format!("applying KEV listings: {e}");
                    tracing::warn!(source.id = id, error = %msg, "feed store failed");
                    msg
                })?;
                report.kev_listings = applied.new_entries + applied.changed_entries;
                report.kev_marked = applied.advisories.len();
                report.revised += applied.advisories.len();
                for adv in &applied.advisories {
                    tracing::info!(source.id = id, advisory.id = %adv, "advisory added to KEV: assessed again");
                }
            }
            if cursor.is_some() && cursor != state.cursor {
                app.store.set_feed_cursor(id, cursor.as_deref()).await.map_err(|e| e.to_string())?;
            }
            let items = (report.new + report.revised + report.kev_listings) as i64;
            app.store
                .record_feed_success(id, Some((validators.etag, validators.last_modified)), items, Utc::now())
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(
                source.id = id,
                bytes,
                pages,
                new = report.new,
                revised = report.revised,
                unchanged = report.unchanged,
                refused = report.refused,
                kev_listings = report.kev_listings,
                kev_marked = report.kev_marked,
                "feed collected"
            );
        }
    }
    if report.new + report.revised > 0 {
        app.wake_triage.notify_one();
    }
    Ok(report)
}

/// Runs every enabled feed on its schedule until shutdown.
pub async fn run(app: App, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let runner = Arc::new(runner(&app)?);
    let mut tasks = Vec::new();
    for cfg in app.settings.feeds.iter().filter(|f| f.enabled()) {
        let cfg = resolve(&app, cfg);
        let feed: Arc<Source> = Arc::new(cfg.build()?);
        let schedule = cfg.schedule()?;
        let (app, runner, mut shutdown) = (app.clone(), runner.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            let id = feed.id().to_owned();
            let pacing = app.settings.collect.pacing();
            let ttl = chrono::Duration::seconds(app.settings.collect.lease_secs.max(3) as i64);
            loop {
                let now = Utc::now();
                let leased = app.store.lease_feed(&id, &app.node, now, now + ttl).await;
                let held = matches!(leased, Ok(true));
                match leased {
                    Ok(true) => {
                        // Renew while the run lasts; a dead node's lease runs out after `ttl`.
                        let beat = {
                            let (app, id) = (app.clone(), id.clone());
                            tokio::spawn(async move {
                                loop {
                                    tokio::time::sleep((ttl / 3).to_std().unwrap_or(Duration::from_secs(1)))
                                        .await;
                                    let now = Utc::now();
                                    if !app
                                        .store
                                        .lease_feed(&id, &app.node, now, now + ttl)
                                        .await
                                        .unwrap_or(false)
                                    {
                                        tracing::warn!(source.id = %id, "feed lease lost while running");
                                    }
                                }
                            })
                        };
                        let _ = collect_once(&app, &runner, &feed).await;
                        beat.abort();
                    }
                    Ok(false) => tracing::debug!(source.id = %id, "feed runs on another node this time"),
                    Err(e) => tracing::warn!(source.id = %id, error = %e, "cannot take the feed lease"),
                }
                let failures = match app.store.feed_state(&id).await {
                    Ok(Some(s)) => s.consecutive_failures.max(0) as u32,
                    _ => 0,
                };
                let now = Utc::now();
                let Some(next) =
                    broadcast_collect::next_attempt(&schedule, now, failures, &pacing, rand::random::<f64>())
                else {
                    break;
                };
                if failures > 0 {
                    tracing::info!(source.id = %id, failures, next = %next, "feed failing: backing off");
                }
                // Hold the lease through this slot, so no other node runs the feed again
                // before the next one; it runs out just before then.
                if held {
                    let until = next - chrono::Duration::seconds(1);
                    let _ = app.store.lease_feed(&id, &app.node, now, until.max(now)).await;
                }
                let wait = (next - now).to_std().unwrap_or(Duration::from_secs(1));
                if sleep_or_shutdown(wait, &mut shutdown).await {
                    let _ = app.store.release_feed(&id, &app.node).await;
                    break;
                }
            }
        }));
    }
    if tasks.is_empty() {
        // No feeds on this node: nothing to do until shutdown (not an error).
        tracing::info!("collector role on, but no feeds are enabled");
        let mut shutdown = shutdown;
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
