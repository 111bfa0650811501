//! One ranking request, start to finish: features (one Redis round trip, defaults when Redis
//! is slow or down), the shared transforms, the batcher, ranking by expected value.

use std::time::{Duration, Instant};

use adrank_featurestore::{
    events::{Impression, RawFeatures, RawValue},
    online::{AdRef, Fetched, Reader},
    request::RankRequest,
    spec::POSITION_FIELD,
};
use serde::{Deserialize, Serialize};

use crate::{
    ServingConfig,
    batcher::{BatchError, Rows},
    model::LoadedVersion,
};

/// The ranked answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankResponse {
    pub request_id: String,
    pub model: ModelRef,
    /// Best first: by pCTR x bid.
    pub ranked: Vec<Ranked>,
    /// The online features could not be read in time: spec defaults were used.
    pub degraded: bool,
    pub timing: Timing,
}

/// The model version that scored a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    pub version: u64,
}

/// One ranked candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranked {
    pub ad_id: String,
    pub advertiser_id: String,
    pub bid: f64,
    pub pctr: f64,
    /// pCTR x bid.
    pub expected_value: f64,
    /// Unique per served impression: `<request_id>:<position>`.
    pub impression_id: String,
    /// 0 for the top.
    pub position: u32,
}

/// Where a request's time went, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub features_ms: f64,
    pub queue_ms: f64,
    pub inference_ms: f64,
    pub total_ms: f64,
    /// Rows in the model run that scored this request (its own and others').
    pub batch_rows: usize,
}

/// Why a request was not ranked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RankError {
    #[error(transparent)]
    Batch(#[from] BatchError),
}

/// Ranks one valid request with `version`; also returns the served impressions (the ranked
/// top-k with the raw features each was scored from), for the impression log.
pub async fn rank(
    request: &RankRequest,
    version: &LoadedVersion,
    reader: Option<&Reader>,
    config: &ServingConfig,
) -> Result<(RankResponse, Vec<Impression>), RankError> {
    let started = Instant::now();
    let budget = Duration::from_millis(request.deadline_ms.map_or(config.default_deadline_ms, u64::from));
    let deadline = started + budget;
    let ads: Vec<AdRef<'_>> =
        request.candidates.iter().map(|c| AdRef { ad_id: &c.ad_id, advertiser_id: &c.advertiser_id }).collect();
    // Features may use half the budget: the model needs the rest.
    let fetched = match reader {
        Some(reader) => {
            tokio::time::timeout(budget / 2, reader.fetch(&request.user_id, &ads, request.context.event_time_ms))
                .await
                .ok()
                .and_then(Result::ok)
        }
        None => None,
    };
    let degraded = fetched.is_none();
    if degraded {
        crate::metrics::degraded();
    }
    let fetched = fetched.unwrap_or_else(|| Fetched { ads: vec![Default::default(); ads.len()], ..Fetched::default() });
    let features_ms = ms(started.elapsed());

    let transformer = &version.transformer;
    let mut rows = Rows { rows: request.candidates.len(), ..Rows::default() };
    let mut raws: Vec<RawFeatures> = Vec::with_capacity(request.candidates.len());
    for (candidate, ad) in request.candidates.iter().zip(&fetched.ads) {
        // One flat record per candidate, later sources winning: the online store's hashes, the
        // context, the candidate's own fields. Every candidate is scored for the top slot.
        let mut raw = fetched.user.clone();
        raw.merge(ad);
        raw.merge(&request.context.features);
        raw.insert("surface", RawValue::from(request.context.surface.as_str()));
        raw.merge(&candidate.features);
        raw.insert("bid", RawValue::Num(candidate.bid));
        raw.insert(POSITION_FIELD, RawValue::Num(0.0));
        transformer.transform(&raw, &mut rows.ids, &mut rows.dense);
        // The log keeps the record without the slot: the trainer takes the served one.
        raw.remove(POSITION_FIELD);
        raws.push(raw);
    }
    crate::metrics::queue_depth(version.batcher.queued());
    let scored = version.batcher.score(rows, deadline).await?;
    crate::metrics::stages(features_ms / 1000.0, scored.queue.as_secs_f64(), scored.inference.as_secs_f64());
    let mut order: Vec<usize> = (0..request.candidates.len()).collect();
    let value = |i: usize| f64::from(scored.scores[i]) * request.candidates[i].bid;
    order.sort_by(|&a, &b| value(b).total_cmp(&value(a)).then(a.cmp(&b)));
    order.truncate(request.top_k.map_or(order.len(), |k| k as usize));
    let manifest = &version.manifest;
    let impressions = order
        .iter()
        .enumerate()
        .map(|(position, &i)| {
            let c = &request.candidates[i];
            Impression {
                impression_id: format!("{}:{position}", request.request_id),
                request_id: request.request_id.clone(),
                event_time_ms: request.context.event_time_ms,
                user_id: request.user_id.clone(),
                ad_id: c.ad_id.clone(),
                advertiser_id: c.advertiser_id.clone(),
                position: position.min(usize::from(u16::MAX)) as u16,
                surface: request.context.surface.clone(),
                model_name: manifest.name.clone(),
                model_version: manifest.version.to_string(),
                score: f64::from(scored.scores[i]),
                bid: c.bid,
                features: std::mem::take(&mut raws[i]),
                oracle_p: None,
            }
        })
        .collect();
    let ranked = order
        .into_iter()
        .enumerate()
        .map(|(position, i)| {
            let c = &request.candidates[i];
            Ranked {
                ad_id: c.ad_id.clone(),
                advertiser_id: c.advertiser_id.clone(),
                bid: c.bid,
                pctr: f64::from(scored.scores[i]),
                expected_value: value(i),
                impression_id: format!("{}:{position}", request.request_id),
                position: position as u32,
            }
        })
        .collect();
    let response = RankResponse {
        request_id: request.request_id.clone(),
        model: ModelRef { name: version.manifest.name.clone(), version: version.manifest.version },
        ranked,
        degraded,
        timing: Timing {
            features_ms,
            queue_ms: ms(scored.queue),
            inference_ms: ms(scored.inference),
            total_ms: ms(started.elapsed()),
            batch_rows: scored.batch_rows,
        },
    };
    Ok((response, impressions))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
