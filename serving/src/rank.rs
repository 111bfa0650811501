//! One ranking request, start to finish: features (one Redis round trip, defaults when Redis
//! is slow or down), the shared transforms, the batcher, ranking by expected value.

use std::time::{Duration, Instant};

use adrank_featurestore::trace_context;
use tracing::Instrument as _;

use adrank_contracts::{
    events::{Impression, RawFeatures, RawValue, RolloutArm},
    request::RankRequest,
    spec::POSITION_FIELD,
};
use adrank_featurestore::online::{AdRef, Fetched, Reader};
use adrank_registry::{Arm, Assignment};
use serde::{Deserialize, Serialize};

use crate::{
    ServingConfig,
    batcher::BatchError,
    model::LoadedVersion,
    shadow::{Job, Permit},
};

/// A ranked request: the reply, the impressions to log, and the shadow copy to score (which
/// then logs the impressions itself, with the candidate's scores).
#[derive(Debug)]
pub struct Served {
    pub response: RankResponse,
    pub impressions: Vec<Impression>,
    pub shadow: Option<Job>,
}

/// The candidate a sampled request is copied to at a rollout's shadow step.
#[derive(Debug)]
pub struct Shadowing {
    pub permit: Permit,
    pub candidate: std::sync::Arc<LoadedVersion>,
    pub rollout: u64,
}

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
    /// The rollout arm the user is in, while a rollout is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm: Option<Arm>,
}

/// One ranked candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranked {
    pub ad_id: String,
    pub advertiser_id: String,
    pub bid: f64,
    /// The predicted click probability at the top slot: what candidates are ranked by.
    pub pctr: f64,
    /// pCTR x bid.
    pub expected_value: f64,
    /// For the shown slots: the predicted click probability at the slot shown in (the model
    /// scores them again at their positions; equal to `pctr` at the top). This is what the
    /// impression logs as its score. Absent past the slots, for a model without a position
    /// input, and when the second scoring missed the deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown_pctr: Option<f64>,
    /// For the candidates shown (the first `serving.slots`): the impression's id, unique
    /// whatever the request sent (clicks name it). Absent past the slots: scored, not shown,
    /// not logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impression_id: Option<String>,
    /// 0 for the top.
    pub position: u32,
}

/// Where a request's time went, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub features_ms: f64,
    pub queue_ms: f64,
    pub inference_ms: f64,
    /// Scoring the shown slots again at their positions (a second wait in the queue and run).
    #[serde(default)]
    pub shown_ms: f64,
    pub total_ms: f64,
    /// Rows in the model run that scored this request (its own and others').
    pub batch_rows: usize,
}

/// The record a served impression logs: the layers merged (later ones winning) with the bid,
/// without the slot (the trainer takes the served one). The trainer transforms this record,
/// serving the view: a test holds the two to identical rows.
pub(crate) fn logged_record(layers: [&RawFeatures; 4], bid: f64) -> RawFeatures {
    let mut raw = layers[0].clone();
    for layer in &layers[1..] {
        raw.merge(layer);
    }
    raw.insert("bid", RawValue::Num(bid));
    raw.remove(POSITION_FIELD);
    raw
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
    (assigned, shadow): (Option<Assignment>, Option<Shadowing>),
    reader: Option<&Reader>,
    config: &ServingConfig,
) -> Result<Served, RankError> {
    let started = Instant::now();
    let budget = Duration::from_millis(request.deadline_ms.map_or(config.default_deadline_ms, u64::from));
    let deadline = started + budget;
    let ads: Vec<AdRef<'_>> =
        request.candidates.iter().map(|c| AdRef { ad_id: &c.ad_id, advertiser_id: &c.advertiser_id }).collect();
    // Features may use half the budget: the model needs the rest.
    let fetched = match reader {
        Some(reader) => {
            let fetch = reader.fetch(&request.user_id, &ads, request.context.event_time_ms);
            match tokio::time::timeout(budget / 2, fetch)
                .instrument(trace_context::span(|| tracing::info_span!("features", ads = ads.len())))
                .await
            {
                Ok(Ok(fetched)) => Some(fetched),
                Ok(Err(e)) => {
                    crate::metrics::degraded("error", Some(&e));
                    None
                }
                Err(_) => {
                    crate::metrics::degraded("timeout", None);
                    None
                }
            }
        }
        None => {
            crate::metrics::degraded("unreachable", None);
            None
        }
    };
    let degraded = fetched.is_none();
    let fetched = fetched.unwrap_or_else(|| Fetched::ids_only(&request.user_id, &ads));
    let features_ms = ms(started.elapsed());

    let mut context = request.context.features.clone();
    context.insert("surface", RawValue::from(request.context.surface.as_str()));
    let rows = version.encoder.candidate_rows(request, &fetched, &context);
    crate::metrics::queue_depth(version.batcher.queued());
    let scoring = trace_context::span(|| {
        tracing::info_span!(
            "score",
            model_version = version.manifest.version,
            queue_ms = tracing::field::Empty,
            inference_ms = tracing::field::Empty,
            batch_rows = tracing::field::Empty,
        )
    });
    let scored = version.batcher.score(rows, deadline).instrument(scoring.clone()).await?;
    // The batch is shared with other requests: its queue wait and run are this span's fields.
    scoring.record("queue_ms", ms(scored.queue));
    scoring.record("inference_ms", ms(scored.inference));
    scoring.record("batch_rows", scored.batch_rows);
    crate::metrics::stages(features_ms / 1000.0, scored.queue.as_secs_f64(), scored.inference.as_secs_f64());
    let mut order: Vec<usize> = (0..request.candidates.len()).collect();
    let value = |i: usize| f64::from(scored.scores[i]) * request.candidates[i].bid;
    order.sort_by(|&a, &b| value(b).total_cmp(&value(a)).then(a.cmp(&b)));
    // Without `top_k`, the slots the product shows; only those are impressions.
    let slots = config.slots as usize;
    order.truncate(request.top_k.map_or(slots, |k| k as usize));
    let shown = order.len().min(slots);
    let rescoring = Instant::now();
    let at_slot = at_positions(version, (request, &fetched, &context), &order[..shown], &scored.scores, deadline).await;
    let shown_ms = ms(rescoring.elapsed());
    crate::metrics::shown_stage(shown_ms / 1000.0);
    let shown_score = |position: usize, i: usize| at_slot.as_ref().map_or(scored.scores[i], |s| s[position]);
    let reply = crate::ids::reply();
    let manifest = &version.manifest;
    // Only a shadowed request needs them once the reply is built.
    let shown_slots = if shadow.is_some() { order[..shown].to_vec() } else { Vec::new() };
    let impressions = order[..shown]
        .iter()
        .enumerate()
        .map(|(position, &i)| {
            let c = &request.candidates[i];
            let ad = fetched.ads[i].record();
            Impression {
                impression_id: crate::ids::impression(&reply, position),
                request_id: request.request_id.clone(),
                event_time_ms: request.context.event_time_ms,
                user_id: request.user_id.clone(),
                ad_id: c.ad_id.clone(),
                advertiser_id: c.advertiser_id.clone(),
                position: position.min(usize::from(u16::MAX)) as u16,
                surface: request.context.surface.clone(),
                model_name: manifest.name.clone(),
                model_version: manifest.version.to_string(),
                score: f64::from(shown_score(position, i)),
                bid: c.bid,
                // The record as the trainer reads it: every layer, without the slot (the
                // trainer takes the served one).
                features: logged_record([&fetched.user, &ad, &context, &c.features], c.bid),
                oracle_p: None,
                rollout: assigned.map(|a| RolloutArm { id: a.rollout, arm: a.arm.as_str().to_string() }),
                shadow_score: None,
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
                shown_pctr: at_slot.as_ref().and_then(|s| s.get(position)).map(|&p| f64::from(p)),
                impression_id: (position < shown).then(|| crate::ids::impression(&reply, position)),
                position: position as u32,
            }
        })
        .collect();
    let response = RankResponse {
        request_id: request.request_id.clone(),
        model: ModelRef {
            name: version.manifest.name.clone(),
            version: version.manifest.version,
            arm: assigned.map(|a| a.arm),
        },
        ranked,
        degraded,
        timing: Timing {
            features_ms,
            queue_ms: ms(scored.queue),
            inference_ms: ms(scored.inference),
            shown_ms,
            total_ms: ms(started.elapsed()),
            batch_rows: scored.batch_rows,
        },
    };
    let Some(Shadowing { permit, candidate, rollout }) = shadow else {
        return Ok(Served { response, impressions, shadow: None });
    };
    let job = Job {
        permit,
        candidate,
        rollout,
        request: request.clone(),
        fetched,
        context,
        scores: scored.scores,
        shown: shown_slots,
        impressions,
    };
    Ok(Served { response, impressions: Vec::new(), shadow: Some(job) })
}

/// The shown candidates' (`shown`, in slot order) click probabilities at their slots: the top's
/// is its row already scored, the others are scored again with their position. `None` for a
/// model without a position input, or when the second run fails (the caller keeps the top
/// slot's scores and the metric counts it).
async fn at_positions(
    version: &LoadedVersion,
    parts: (&RankRequest, &Fetched, &RawFeatures),
    shown: &[usize],
    top: &[f32],
    deadline: Instant,
) -> Option<Vec<f32>> {
    let (&first, rest) = shown.split_first()?;
    if !version.transformer.inputs().iter().any(|i| i == POSITION_FIELD) {
        return None;
    }
    let mut scores = Vec::with_capacity(shown.len());
    scores.push(top[first]);
    if !rest.is_empty() {
        let rows = version.encoder.slot_rows(parts, rest.iter().zip(1..).map(|(&i, slot)| (i, slot)));
        match version.batcher.score(rows, deadline).await {
            Ok(scored) => scores.extend(scored.scores),
            Err(e) => {
                crate::metrics::shown_rescored("failed");
                tracing::debug!(error = %e, "the shown slots were not scored at their positions");
                return None;
            }
        }
    }
    crate::metrics::shown_rescored("scored");
    Some(scores)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
