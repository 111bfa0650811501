//! A request's model rows, from each candidate's layers of raw features.
//!
//! Most of a row does not change from one candidate to the next: the user's and the context's
//! features are the same for all of them. So a request works out, from what its layers hold,
//! which features come out the same for every candidate (encoded once and copied into each
//! row) and encodes only the rest per candidate; each distinct stored record (an advertiser
//! several candidates share, the record of no history most share) is resolved to the inputs
//! once. The result is the row the trainer gets from the logged record: a test holds the two
//! identical.

use std::sync::Arc;

use adrank_contracts::{
    events::{Input, Lookup, RawFeatures, RawValue},
    request::RankRequest,
    spec::{Encoded, POSITION_FIELD, Transformer},
};
use adrank_featurestore::online::{AdFeatures, Fetched};
use rustc_hash::FxHashMap;

use crate::batcher::Rows;

/// One model version's transforms, applied to requests.
#[derive(Debug)]
pub struct Encoder {
    transformer: Arc<Transformer>,
    places: Places,
}

/// Where the inputs every candidate sets itself sit among the transformer's inputs.
#[derive(Debug, Clone, Copy)]
struct Places {
    bid: Option<usize>,
    position: Option<usize>,
    age: Option<usize>,
}

impl Encoder {
    pub fn new(transformer: Arc<Transformer>) -> Self {
        let inputs = transformer.inputs();
        let place = |name: &str| inputs.iter().position(|i| i == name);
        let places = Places { bid: place("bid"), position: place(POSITION_FIELD), age: place(AdFeatures::AGE) };
        Self { transformer, places }
    }

    /// Every candidate's model row, scored for the top slot.
    pub(crate) fn candidate_rows(&self, request: &RankRequest, fetched: &Fetched, context: &RawFeatures) -> Rows {
        self.slot_rows((request, fetched, context), (0..request.candidates.len()).map(|i| (i, 0)))
    }

    /// The rows of `(candidate index, slot)` pairs. Later sources win: the online store's
    /// hashes (the user's, then the ad's, its advertiser's, the user's history with them and
    /// the ad's age), the context (its surface last, in `context`), the candidate's own fields,
    /// its bid, the slot.
    pub(crate) fn slot_rows(
        &self,
        (request, fetched, context): (&RankRequest, &Fetched, &RawFeatures),
        which: impl Iterator<Item = (usize, u32)>,
    ) -> Rows {
        let which: Vec<(usize, u32)> = which.collect();
        let transformer = &*self.transformer;
        let (id_width, dense_width) = (transformer.id_width(), transformer.dense_width());
        let mut rows = Rows { rows: which.len(), ids: Vec::new(), dense: Vec::new() };
        if which.is_empty() {
            return rows;
        }
        let inputs = transformer.inputs();
        let shared = Shared::new(inputs, &fetched.user, context, self.places);
        // Each candidate's stored layers, lowest first: its ad, advertiser, history with the
        // ad's category, with the advertiser; each distinct record resolved once.
        let mut layers = Layers::new(inputs.len());
        let placed: Vec<[usize; 4]> = which
            .iter()
            .map(|&(i, _)| {
                let stored = &fetched.ads[i];
                let [category, advertiser] = &stored.history;
                [&stored.ad, &stored.advertiser, category, advertiser].map(|record| layers.place(record, inputs))
            })
            .collect();

        // Which inputs some candidate gives a value of its own: features reading them are
        // encoded per candidate.
        let mut given = Given::new(inputs.len());
        for resolved in &layers.resolved {
            for (i, value) in resolved.iter().enumerate() {
                given.by_ads[i] |= value.is_some();
            }
        }
        if let Some(age) = self.places.age
            && which.iter().any(|&(i, _)| fetched.ads[i].ad_age_hours != RawValue::Missing)
        {
            given.by_ads[age] = true;
        }
        let mut own = Vec::new();
        for &(i, _) in &which {
            let features = &request.candidates[i].features;
            if !features.is_empty() {
                features.resolve_into(inputs, &mut own);
                for (i, value) in own.iter().enumerate() {
                    given.by_own[i] |= value.is_some();
                }
            }
        }

        let view = |j: usize| {
            let (i, slot) = which[j];
            let candidate = &request.candidates[i];
            CandidateView {
                shared: &shared,
                layers: placed[j].map(|l| &layers.resolved[l][..]),
                age: &fetched.ads[i].ad_age_hours,
                own: &candidate.features,
                bid: RawValue::Num(candidate.bid),
                slot: RawValue::Num(f64::from(slot)),
            }
        };
        // The features every candidate shares, encoded once (from the first one's view).
        let (mut template_ids, mut template_dense) = (vec![0; id_width], vec![0.0; dense_width]);
        let mut per_candidate = Vec::new();
        let first = view(0);
        for k in 0..transformer.features() {
            let reads = transformer.reads(k);
            if reads.iter().all(|&i| given.same_for_all(i, &shared, self.places)) {
                put(transformer.encode(k, &first), transformer.column(k), (&mut template_ids, &mut template_dense));
            } else {
                per_candidate.push(k);
            }
        }
        rows.ids.reserve(which.len() * id_width);
        rows.dense.reserve(which.len() * dense_width);
        for j in 0..which.len() {
            let (id_start, dense_start) = (rows.ids.len(), rows.dense.len());
            rows.ids.extend_from_slice(&template_ids);
            rows.dense.extend_from_slice(&template_dense);
            let row = (&mut rows.ids[id_start..], &mut rows.dense[dense_start..]);
            let view = view(j);
            for &k in &per_candidate {
                put(transformer.encode(k, &view), transformer.column(k), (&mut *row.0, &mut *row.1));
            }
        }
        rows
    }
}

/// Writes one feature's input at its column of a row.
fn put(value: Encoded, column: usize, (ids, dense): (&mut [i64], &mut [f32])) {
    match value {
        Encoded::Id(x) => ids[column] = x,
        Encoded::Dense(x) => dense[column] = x,
    }
}

/// Which inputs the candidates' layers give values for, by input place.
struct Given {
    /// By some candidate's stored layers: its ad, advertiser, history or age.
    by_ads: Vec<bool>,
    /// By some candidate's own fields.
    by_own: Vec<bool>,
}

impl Given {
    fn new(inputs: usize) -> Self {
        Self { by_ads: vec![false; inputs], by_own: vec![false; inputs] }
    }

    /// Whether input `i` reads the same for every candidate: no candidate sets it, and the
    /// context's value wins over any ad's (or no ad has one, and the user's stands).
    fn same_for_all(&self, i: usize, shared: &Shared<'_>, places: Places) -> bool {
        Some(i) != places.bid
            && Some(i) != places.position
            && !self.by_own[i]
            && (shared.context[i].is_some() || !self.by_ads[i])
    }
}

/// The request's stored layers resolved to input places, once per distinct record (candidates
/// share advertisers, and most share the record of no history).
struct Layers<'a> {
    by_record: FxHashMap<*const RawFeatures, usize>,
    /// The first is the empty layer.
    resolved: Vec<Vec<Option<&'a RawValue>>>,
}

impl<'a> Layers<'a> {
    fn new(inputs: usize) -> Self {
        Self { by_record: FxHashMap::default(), resolved: vec![vec![None; inputs]] }
    }

    fn place(&mut self, record: &'a Arc<RawFeatures>, inputs: &[String]) -> usize {
        if record.is_empty() {
            return 0;
        }
        let next = self.resolved.len();
        let place = *self.by_record.entry(Arc::as_ptr(record)).or_insert(next);
        if place == next {
            let mut resolved = Vec::with_capacity(inputs.len());
            record.resolve_into(inputs, &mut resolved);
            self.resolved.push(resolved);
        }
        place
    }
}

/// What every candidate of a request shares, resolved once to the transformer's inputs: the
/// user's and the context's values, and where the bid, the slot and the ad's age sit.
struct Shared<'a> {
    user: Vec<Option<&'a RawValue>>,
    context: Vec<Option<&'a RawValue>>,
    places: Places,
}

impl<'a> Shared<'a> {
    fn new(inputs: &[String], user: &'a RawFeatures, context: &'a RawFeatures, places: Places) -> Self {
        let resolve = |layer: &'a RawFeatures| {
            let mut values = Vec::with_capacity(inputs.len());
            layer.resolve_into(inputs, &mut values);
            values
        };
        Self { user: resolve(user), context: resolve(context), places }
    }
}

/// One candidate's raw features as layers, later ones winning (the user's, then its ad's and
/// advertiser's, its history with the user, its age; the context; the candidate's own fields),
/// then its bid and the slot it is scored for. Reads go by the input's place, without comparing
/// names, except into the candidate's own fields (usually none).
struct CandidateView<'s, 'a> {
    shared: &'s Shared<'a>,
    /// The ad's, the advertiser's, the history with the ad's category and with the advertiser,
    /// each by input place.
    layers: [&'s [Option<&'a RawValue>]; 4],
    age: &'a RawValue,
    own: &'a RawFeatures,
    bid: RawValue,
    slot: RawValue,
}

impl Lookup for CandidateView<'_, '_> {
    fn get(&self, input: Input<'_>) -> Option<&RawValue> {
        let i = input.index;
        let places = self.shared.places;
        if Some(i) == places.bid {
            return Some(&self.bid);
        }
        if Some(i) == places.position {
            return Some(&self.slot);
        }
        if !self.own.is_empty()
            && let Some(value) = self.own.get(input.name)
        {
            return Some(value);
        }
        if let Some(value) = self.shared.context[i] {
            return Some(value);
        }
        if Some(i) == places.age && *self.age != RawValue::Missing {
            return Some(self.age);
        }
        let [ad, advertiser, category, with_advertiser] = self.layers;
        with_advertiser[i].or(category[i]).or(advertiser[i]).or(ad[i]).or(self.shared.user[i])
    }
}

#[cfg(test)]
mod tests;
