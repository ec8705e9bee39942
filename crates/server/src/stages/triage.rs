//! Triage stage: assesses every advisory revision that has no assessment yet.

use crate::app::App;
use crate::stages::sleep_or_shutdown;
use chrono::Utc;
use std::time::Duration;
use tokio::sync::watch;

/// Assesses everything waiting; returns how many were assessed.
pub async fn assess_pending(app: &App) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let batch = app.store.advisories_to_assess(200).await?;
        if batch.is_empty() {
            return Ok(total);
        }
        for adv in &batch {
            let verdict = broadcast_triage::assess(adv, &app.rules, Utc::now());
            app.store.save_assessment(&verdict, Utc::now()).await?;
            tracing::debug!(advisory.id = %adv.id, relevant = verdict.relevant, level = %verdict.threat_level, "assessed");
        }
        total += batch.len();
    }
}

pub async fn run(app: App, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    loop {
        match assess_pending(&app).await {
            Ok(n) if n > 0 => tracing::info!(assessed = n, "triage round"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "triage round failed"),
        }
        let notified = app.wake_triage.notified();
        tokio::select! {
            _ = notified => {}
            stop = sleep_or_shutdown(Duration::from_secs(5), &mut shutdown) => if stop { return Ok(()) },
        }
        if *shutdown.borrow() {
            return Ok(());
        }
    }
}
