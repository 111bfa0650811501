//! Ads' and advertisers' model inputs, encoded once per pair of stored records and shared by
//! every request that reads the same records.
//!
//! The online store's reader keeps each entity's record as one shared `Arc` while its counters
//! stay in the same bucket (and the reader's cache holds it), so a pair of record pointers names
//! their contents exactly: an entry holds both records, so neither address can be reused while
//! it lives. An entry is dropped once only it still holds its records (the reader moved on).

use std::sync::{Arc, Mutex};

use adrank_contracts::{
    events::{Input, Lookup, RawFeatures, RawValue},
    spec::{Encoded, Transformer},
};
use adrank_featurestore::online::AdFeatures;
use rustc_hash::FxHashMap;

/// Below this many entries the cache is not swept.
const SWEEP_FROM: usize = 4096;

/// One model version's encoded ad-side inputs.
#[derive(Debug)]
pub(crate) struct Slices {
    held: Mutex<Held>,
}

#[derive(Debug)]
struct Held {
    by_records: FxHashMap<(usize, usize), Arc<Slice>>,
    /// The size at which stale entries are next dropped.
    sweep_at: usize,
}

/// One ad's and its advertiser's stored values by input place, and the features they fix.
#[derive(Debug)]
pub(crate) struct Slice {
    // Held so that their addresses, the key, stay theirs.
    ad: Arc<RawFeatures>,
    advertiser: Arc<RawFeatures>,
    /// By input place: the advertiser's value, else the ad's (later layers win, as in the
    /// logged record).
    pub(crate) values: Vec<Option<RawValue>>,
    /// The input places `values` holds.
    pub(crate) provides: Vec<usize>,
    /// Per feature: its input from `values` alone. Meaningful for the features that read only
    /// what an ad layer can hold (see [`super::Encoder`]); a request uses it only where nothing
    /// else it has could change the value.
    pub(crate) encoded: Vec<Encoded>,
}

/// A lookup by input place into a slice's values.
struct ByPlace<'a>(&'a [Option<RawValue>]);

impl Lookup for ByPlace<'_> {
    fn get(&self, input: Input<'_>) -> Option<&RawValue> {
        self.0[input.index].as_ref()
    }
}

impl Slice {
    /// Encodes `ad`'s and `advertiser`'s values: every feature in `ad_side` that reads one of
    /// them; the others take `empty` (their input from no value at all).
    fn new(transformer: &Transformer, (ad_side, empty): (&[bool], &[Encoded]), stored: &AdFeatures) -> Self {
        let inputs = transformer.inputs();
        let mut layer = Vec::with_capacity(inputs.len());
        stored.ad.resolve_into(inputs, &mut layer);
        let mut values: Vec<Option<RawValue>> = layer.iter().map(|v| v.cloned()).collect();
        stored.advertiser.resolve_into(inputs, &mut layer);
        for (value, later) in values.iter_mut().zip(&layer) {
            if let Some(later) = later {
                *value = Some((*later).clone());
            }
        }
        let provides: Vec<usize> = (0..values.len()).filter(|&i| values[i].is_some()).collect();
        let lookup = ByPlace(&values);
        let encoded = (0..transformer.features())
            .map(|k| {
                let reads = transformer.reads(k);
                if ad_side[k] && reads.iter().any(|i| values[*i].is_some()) {
                    transformer.encode(k, &lookup)
                } else {
                    empty[k]
                }
            })
            .collect();
        Self { ad: stored.ad.clone(), advertiser: stored.advertiser.clone(), values, provides, encoded }
    }

    /// Whether only this entry still holds one of its records.
    fn stale(&self) -> bool {
        Arc::strong_count(&self.ad) == 1 || Arc::strong_count(&self.advertiser) == 1
    }
}

impl Slices {
    pub(crate) fn new() -> Self {
        Self { held: Mutex::new(Held { by_records: FxHashMap::default(), sweep_at: SWEEP_FROM }) }
    }

    /// Each candidate's slice, in order: shared when its records were encoded before, else
    /// encoded now (and kept when the reader keeps the ad's record too).
    pub(crate) fn of<'f>(
        &self,
        transformer: &Transformer,
        statics: (&[bool], &[Encoded]),
        candidates: impl Iterator<Item = &'f AdFeatures>,
    ) -> Vec<Arc<Slice>> {
        let mut held = self.held.lock().expect("the slices lock is never poisoned: nothing panics holding it");
        let found = candidates
            .map(|stored| {
                let key = (Arc::as_ptr(&stored.ad) as usize, Arc::as_ptr(&stored.advertiser) as usize);
                if let Some(slice) = held.by_records.get(&key) {
                    return slice.clone();
                }
                let slice = Arc::new(Slice::new(transformer, statics, stored));
                // A record only this request holds (the store could not be read, or the reader
                // keeps no cache) will not be seen again.
                if Arc::strong_count(&stored.ad) > 1 {
                    held.by_records.insert(key, slice.clone());
                }
                slice
            })
            .collect();
        if held.by_records.len() >= held.sweep_at {
            held.by_records.retain(|_, slice| !slice.stale());
            held.sweep_at = SWEEP_FROM.max(2 * held.by_records.len());
        }
        found
    }

    /// Entries held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.held.lock().expect("never poisoned").by_records.len()
    }
}
