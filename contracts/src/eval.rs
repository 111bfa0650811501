//! Click-prediction quality: log loss, AUC and normalised entropy.
//!
//! One implementation, used by the trainer's offline evaluation and by the synthetic world's
//! oracle (the same measures computed on the true probabilities: the limit a model can reach).

/// Quality of predictions against observed clicks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    /// Examples measured.
    pub examples: u64,
    /// Observed click rate.
    pub ctr: f64,
    /// Mean predicted probability (calibration: compare with `ctr`).
    pub mean_prediction: f64,
    /// Mean negative log-likelihood, natural log.
    pub log_loss: f64,
    /// Area under the ROC curve; ties count one half.
    pub auc: f64,
    /// Log loss divided by the entropy of the observed click rate: below 1 means better than
    /// predicting the average.
    pub normalised_entropy: f64,
}

/// Predictions are clamped away from 0 and 1 so one confident mistake cannot make the loss
/// infinite.
const EPSILON: f64 = 1e-12;

/// Measures `(prediction, clicked)` pairs. Returns `None` when there are none.
pub fn quality(pairs: &[(f64, bool)]) -> Option<Quality> {
    if pairs.is_empty() {
        return None;
    }
    let n = pairs.len() as f64;
    let clicks = pairs.iter().filter(|(_, y)| *y).count() as f64;
    let ctr = clicks / n;
    let log_loss = pairs
        .iter()
        .map(|&(p, y)| {
            let p = p.clamp(EPSILON, 1.0 - EPSILON);
            if y { -p.ln() } else { -(1.0 - p).ln() }
        })
        .sum::<f64>()
        / n;
    let base = if ctr > 0.0 && ctr < 1.0 { -(ctr * ctr.ln() + (1.0 - ctr) * (1.0 - ctr).ln()) } else { f64::NAN };
    Some(Quality {
        examples: pairs.len() as u64,
        ctr,
        mean_prediction: pairs.iter().map(|(p, _)| p).sum::<f64>() / n,
        log_loss,
        auc: auc(pairs),
        normalised_entropy: log_loss / base,
    })
}

/// AUC by the rank-sum (Mann-Whitney) statistic, with tied predictions given their average rank.
fn auc(pairs: &[(f64, bool)]) -> f64 {
    let mut sorted: Vec<(f64, bool)> = pairs.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = sorted.iter().filter(|(_, y)| *y).count() as f64;
    let negatives = sorted.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return f64::NAN;
    }
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].0 == sorted[i].0 {
            j += 1;
        }
        // Ranks i+1 ..= j share their average.
        let average_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += average_rank * sorted[i..j].iter().filter(|(_, y)| *y).count() as f64;
        i = j;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_random_and_tied_rankings() {
        let perfect = [(0.9, true), (0.8, true), (0.2, false), (0.1, false)];
        assert_eq!(quality(&perfect).unwrap().auc, 1.0);
        let inverted = [(0.1, true), (0.9, false)];
        assert_eq!(quality(&inverted).unwrap().auc, 0.0);
        let tied = [(0.5, true), (0.5, false), (0.5, false)];
        assert_eq!(quality(&tied).unwrap().auc, 0.5);
        assert!(quality(&[]).is_none());
    }

    #[test]
    fn predicting_the_base_rate_has_normalised_entropy_one() {
        let pairs: Vec<(f64, bool)> = (0..100).map(|i| (0.25, i % 4 == 0)).collect();
        let q = quality(&pairs).unwrap();
        assert!((q.normalised_entropy - 1.0).abs() < 1e-12, "{q:?}");
        assert!((q.log_loss - 0.562_335_144_618_808_6).abs() < 1e-12, "{q:?}");
    }
}
