//! The retraining lease, held for as long as a loop (or one `adrank retrain`) runs cycles and
//! renewed in the background; checked before the one side effect only its holder may make (the
//! alias change).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use adrank_registry::{Acquired, Lease, LeaseRecord, Registry};

use crate::{Error, Result};

/// The lease's name in the registry (`records/leases/retrain/`).
pub const WHAT: &str = "retrain";

/// A held retraining lease with its renewal task.
#[derive(Debug)]
pub struct LeaseGuard {
    lease: Arc<tokio::sync::Mutex<Lease>>,
    /// Why renewal stopped, once it has.
    lost: Arc<Mutex<Option<String>>>,
    renewer: tokio::task::JoinHandle<()>,
}

/// A holder name unique to this process: host, pid and a random part.
pub fn holder_name() -> String {
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "host".into(), |h| h.trim().to_string());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{host}:{}:{nanos:08x}", std::process::id())
}

impl LeaseGuard {
    /// Takes the lease of model `name`. While another holder has it: with `waiting`, calls it
    /// with their record and tries again every third of the TTL; without, fails at once.
    pub async fn take(
        registry: &Registry,
        name: &str,
        holder: &str,
        ttl: Duration,
        mut waiting: Option<&mut (dyn FnMut(&LeaseRecord) + Send)>,
    ) -> Result<Self> {
        let lease = loop {
            match registry.acquire_lease(name, WHAT, holder, ttl).await? {
                Acquired::Held(lease) => break lease,
                Acquired::Busy(record) => match waiting.as_mut() {
                    Some(tell) => {
                        tell(&record);
                        tokio::time::sleep(period(ttl)).await;
                    }
                    None => {
                        return Err(Error::Registry(adrank_registry::Error::LeaseHeld {
                            name: name.into(),
                            what: WHAT.into(),
                            holder: record.holder.clone(),
                            expires: format!(
                                "{:.1} s from now",
                                (record.expires_at_ms - adrank_contracts::events::now_ms()) as f64 / 1e3
                            ),
                        }));
                    }
                },
            }
        };
        tracing::info!(name, holder, ttl_secs = ttl.as_secs_f64(), "took the retraining lease");
        let lease = Arc::new(tokio::sync::Mutex::new(lease));
        let lost = Arc::new(Mutex::new(None));
        let renewer = tokio::spawn({
            let (lease, lost) = (lease.clone(), lost.clone());
            async move {
                loop {
                    tokio::time::sleep(period(ttl)).await;
                    let mut held = lease.lock().await;
                    let reason = match held.renew().await {
                        Ok(()) => continue,
                        Err(e @ adrank_registry::Error::LeaseHeld { .. }) => e.to_string(),
                        // A store error: try again until the lease would have expired.
                        Err(e) if adrank_contracts::events::now_ms() < held.expires_at_ms() => {
                            tracing::warn!(error = %e, "could not renew the retraining lease; trying again");
                            continue;
                        }
                        Err(e) => format!("it expired while renewals failed: {e}"),
                    };
                    tracing::error!(reason = %reason, "lost the retraining lease; the cycle stops before its next step");
                    *lost.lock().expect("the lease flag is never poisoned") = Some(reason);
                    return;
                }
            }
        });
        Ok(Self { lease, lost, renewer })
    }

    /// Fails unless the lease is still held: before a step, and before changing aliases.
    pub async fn check(&self) -> Result<()> {
        if let Some(reason) = self.lost.lock().expect("the lease flag is never poisoned").clone() {
            return Err(Error::LeaseLost(reason));
        }
        match self.lease.lock().await.check().await {
            Ok(()) => Ok(()),
            Err(e @ adrank_registry::Error::LeaseHeld { .. }) => Err(Error::LeaseLost(e.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// Lets the lease go so that a waiting loop need not wait for its expiry.
    pub async fn release(self) -> Result<()> {
        self.renewer.abort();
        // The aborted task drops its handle on the lease once it has stopped.
        let _ = self.renewer.await;
        let lease = Arc::try_unwrap(self.lease).map_err(|_| Error::LeaseLost("the lease is still in use".into()))?;
        lease.into_inner().release().await?;
        Ok(())
    }
}

/// Renew (and retry a busy lease) every third of its TTL.
fn period(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(200))
}
