//! Impression ids that are unique whatever the caller sends.
//!
//! The caller's `request_id` is echoed, never trusted for identity: a reused one would give two
//! impressions one id, and the join would credit one impression's clicks to the other. Each reply
//! gets this process's random 64-bit prefix and a counter; an impression id is that and its slot.
//! Replicas and restarts draw different prefixes, so ids do not repeat across them either.

use std::{
    hash::{BuildHasher as _, Hasher as _},
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

static PROCESS: OnceLock<u64> = OnceLock::new();
static REPLIES: AtomicU64 = AtomicU64::new(0);

/// A new id for one reply: `<process prefix, 16 hex digits>-<counter, hex>`.
pub fn reply() -> String {
    let process = *PROCESS.get_or_init(|| {
        // RandomState's keys come from the operating system's random source.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        hasher.finish()
    });
    let n = REPLIES.fetch_add(1, Ordering::Relaxed);
    format!("{process:016x}-{n:x}")
}

/// The id of the impression shown in `position` of the reply `reply`.
pub fn impression(reply: &str, position: usize) -> String {
    format!("{reply}:{position}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn replies_never_share_an_id() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| super::reply()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.len() <= 40 && id.is_ascii()));
    }
}
