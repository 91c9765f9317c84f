//! Crash points for tests: `LOGVEIL_CRASH_AT=<name>` makes the process abort (like
//! `kill -9`: no destructors, no flush) the first time execution reaches the named point.
//! `LOGVEIL_CRASH_AFTER=<n>` lets the point pass n times first. Unset, a point costs one
//! relaxed atomic load.
//!
//! Points: `after_seal_before_flush`, `after_seal_flush`, `before_ship`,
//! `after_ack_before_delete`, `after_delete`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

struct Armed {
    name: String,
    after: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let name = std::env::var("LOGVEIL_CRASH_AT").ok()?;
            let after = std::env::var("LOGVEIL_CRASH_AFTER")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            Some(Armed {
                name,
                after,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Aborts the process if `name` is the armed crash point.
pub fn point(name: &str) {
    if let Some(a) = armed() {
        if a.name == name && a.hits.fetch_add(1, Ordering::Relaxed) >= a.after {
            eprintln!("logveil: crash point {name} reached, aborting");
            std::process::abort();
        }
    }
}
