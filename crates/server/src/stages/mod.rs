//! Stage runners. Each reads its input table and writes its output table; none passes data
//! to another in memory.

pub mod collector;
pub mod delivery;
pub mod triage;

use std::time::Duration;
use tokio::sync::watch;

/// Waits for `d`, or returns `true` early if shutdown was requested.
pub async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}
