//! Leases: one holder at a time for a piece of control-plane work (the retraining loop), across
//! processes and machines, with expiry so that a killed holder's work is taken over.
//!
//! A lease is a sequence of create-once records (`records/leases/<what>/<seq>`); the newest is
//! the lease's state. Acquiring, renewing and releasing each create the next number, so two
//! contenders cannot both win (compare-and-swap, as the alias states). After a create the holder
//! lists again and checks that its record is the newest: a contender whose read was so old that
//! the number it created had been pruned loses there. Expiry compares wall clocks of different
//! machines: the TTL must be far above their skew (seconds against a default of a minute).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Registry, Result};

/// One state of a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRecord {
    pub seq: u64,
    /// Who holds it: host, process and a random part, so that a restarted process is new.
    pub holder: String,
    pub written_at_ms: i64,
    /// The holder must renew before this; after it, anyone may take the lease.
    pub expires_at_ms: i64,
    /// The holder let go before expiry.
    pub released: bool,
}

impl LeaseRecord {
    fn is_free(&self, now_ms: i64) -> bool {
        self.released || now_ms >= self.expires_at_ms
    }

    /// Whether `holder` holds it now (not released, not expired).
    pub fn is_held_by(&self, holder: &str) -> bool {
        self.holder == holder && !self.is_free(crate::now_ms())
    }
}

/// A held lease. Renew it well within its TTL; check it before a side effect that only the
/// holder may make.
#[derive(Debug)]
pub struct Lease {
    registry: Registry,
    name: String,
    what: String,
    holder: String,
    ttl: Duration,
    current: LeaseRecord,
}

/// The answer to an attempt to take a lease.
#[derive(Debug)]
pub enum Acquired {
    Held(Lease),
    /// Someone else holds it: their newest record.
    Busy(LeaseRecord),
}

/// Records older than this many numbers below the newest are deleted.
const KEEP: u64 = 16;

impl Registry {
    /// Takes the `what` lease of model `name` for `holder` when it is free, expired or already
    /// `holder`'s.
    pub async fn acquire_lease(&self, name: &str, what: &str, holder: &str, ttl: Duration) -> Result<Acquired> {
        let newest = self.newest_lease(name, what).await?;
        let now = crate::now_ms();
        if let Some(record) = &newest
            && record.holder != holder
            && !record.is_free(now)
        {
            return Ok(Acquired::Busy(record.clone()));
        }
        let mut lease = Lease {
            registry: self.clone(),
            name: name.into(),
            what: what.into(),
            holder: holder.into(),
            ttl,
            current: newest.unwrap_or(LeaseRecord {
                seq: 0,
                holder: String::new(),
                written_at_ms: 0,
                expires_at_ms: 0,
                released: true,
            }),
        };
        match lease.write_next(false).await {
            Ok(()) => Ok(Acquired::Held(lease)),
            Err(Error::LeaseHeld { .. }) => match self.newest_lease(name, what).await? {
                Some(record) => Ok(Acquired::Busy(record)),
                None => Err(Error::NotFound(format!("the {what} lease of `{name}` vanished"))),
            },
            Err(e) => Err(e),
        }
    }

    /// The newest record of the `what` lease of `name`, if it was ever taken.
    pub async fn newest_lease(&self, name: &str, what: &str) -> Result<Option<LeaseRecord>> {
        let kind = format!("leases/{what}");
        match self.record_keys(name, &kind).await?.last() {
            None => Ok(None),
            Some(key) => self.record(name, &kind, key).await,
        }
    }
}

/// When a record expires, relative to now, for messages.
fn expiry(record: &LeaseRecord) -> String {
    let left = record.expires_at_ms - crate::now_ms();
    if record.released || left <= 0 {
        "now (it is free)".into()
    } else {
        format!("{:.1} s from now", left as f64 / 1e3)
    }
}

impl Lease {
    /// Who holds it.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// When it expires unless renewed.
    pub fn expires_at_ms(&self) -> i64 {
        self.current.expires_at_ms
    }

    /// Extends it by its TTL; fails with [`Error::LeaseHeld`] when another holder took it.
    pub async fn renew(&mut self) -> Result<()> {
        self.write_next(false).await
    }

    /// Lets it go, so that a waiting contender need not wait for expiry.
    pub async fn release(mut self) -> Result<()> {
        self.write_next(true).await
    }

    /// Fails unless this holder still holds it and it has not expired: call it just before a
    /// side effect only the holder may make.
    pub async fn check(&self) -> Result<()> {
        let newest = self.registry.newest_lease(&self.name, &self.what).await?;
        match newest {
            Some(record) if record == self.current && !record.is_free(crate::now_ms()) => Ok(()),
            Some(record) => Err(self.held_by(&record)),
            None => Err(Error::NotFound(format!("the {} lease of `{}` vanished", self.what, self.name))),
        }
    }

    fn held_by(&self, record: &LeaseRecord) -> Error {
        Error::LeaseHeld {
            name: self.name.clone(),
            what: self.what.clone(),
            holder: record.holder.clone(),
            expires: expiry(record),
        }
    }

    async fn write_next(&mut self, released: bool) -> Result<()> {
        let now = crate::now_ms();
        let next = LeaseRecord {
            seq: self.current.seq + 1,
            holder: self.holder.clone(),
            written_at_ms: now,
            expires_at_ms: if released { now } else { now.saturating_add(self.ttl.as_millis() as i64) },
            released,
        };
        let kind = format!("leases/{}", self.what);
        let key = format!("{:010}", next.seq);
        if !self.registry.put_record(&self.name, &kind, &key, &next).await? {
            let theirs = self.registry.record::<LeaseRecord>(&self.name, &kind, &key).await?;
            return Err(self.held_by(&theirs.unwrap_or(next)));
        }
        // Ours from here on, whatever the checks below find out.
        self.current = next.clone();
        let keys = self.registry.record_keys(&self.name, &kind).await?;
        if keys.last() != Some(&key) {
            let newest = self.registry.newest_lease(&self.name, &self.what).await?;
            return Err(self.held_by(&newest.unwrap_or(next)));
        }
        // Pruning is housekeeping: a failure leaves a longer sequence, not a lost lease.
        for old in keys.iter().filter(|k| k.parse::<u64>().is_ok_and(|s| s + KEEP < next.seq)) {
            if let Err(e) = self.registry.delete_record(&self.name, &kind, old).await {
                tracing::warn!(error = %e, record = %old, "could not prune an old lease record");
                break;
            }
        }
        Ok(())
    }
}
