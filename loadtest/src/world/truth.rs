//! The ground truth: every parameter of the true click probability.
//!
//! logit(p) = global + user bias + ad bias + advertiser bias + <user vector, ad vector>
//!          + surface effect + hour-of-day effect + segment x category affinity
//!          - position_decay * ln(1 + position)

use super::rng::Rng;

/// Everything that decides one impression's true click probability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Situation {
    pub user: u32,
    pub segment: u32,
    pub ad: u32,
    pub advertiser: u32,
    pub category: u32,
    pub surface: u32,
    pub hour: u32,
    pub position: u32,
}

/// A situation's full logit and the parts of it that belong to single entities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntityTerms {
    pub logit: f64,
    pub user_bias: f64,
    pub ad_bias: f64,
    pub advertiser_bias: f64,
    /// The latent user vector . ad vector.
    pub dot: f64,
}

/// The parameters of the truth at one moment. Cloning it freezes a day's truth (to measure
/// how much the world drifted since).
#[derive(Debug, Clone)]
pub struct Truth {
    pub(super) global_bias: f64,
    pub(super) dim: usize,
    pub(super) user_bias: Vec<f32>,
    pub(super) user_vector: Vec<f32>,
    pub(super) ad_bias: Vec<f32>,
    pub(super) ad_vector: Vec<f32>,
    pub(super) advertiser_bias: Vec<f32>,
    pub(super) surface_effect: Vec<f64>,
    pub(super) hour_effect: [f64; 24],
    /// segments x categories.
    pub(super) affinity: Vec<f64>,
    pub(super) categories: usize,
    pub(super) position_decay: f64,
}

/// Latent components are drawn with this deviation times `dim^-1/4`, so the dot product's
/// deviation is about this value whatever the dimension.
const VECTOR_SCALE: f64 = 0.8;

/// Deviation of the segment x category affinities.
pub(super) const AFFINITY_STD: f64 = 0.6;

impl Truth {
    /// Draws the entity-independent parameters; entities add theirs as they are created.
    pub(super) fn new(
        rng: &mut Rng,
        dim: usize,
        surfaces: usize,
        segments: usize,
        categories: usize,
        position_decay: f64,
    ) -> Self {
        let phase = rng.f64() * std::f64::consts::TAU;
        let mut hour_effect = [0.0; 24];
        for (h, effect) in hour_effect.iter_mut().enumerate() {
            *effect = 0.3 * (std::f64::consts::TAU * h as f64 / 24.0 + phase).sin();
        }
        Self {
            global_bias: 0.0,
            dim,
            user_bias: Vec::new(),
            user_vector: Vec::new(),
            ad_bias: Vec::new(),
            ad_vector: Vec::new(),
            advertiser_bias: Vec::new(),
            surface_effect: (0..surfaces).map(|_| 0.3 * rng.normal()).collect(),
            hour_effect,
            affinity: (0..segments * categories).map(|_| AFFINITY_STD * rng.normal()).collect(),
            categories,
            position_decay,
        }
    }

    fn component_std(&self) -> f64 {
        Self::max_vector_step(self.dim as u32)
    }

    pub(super) fn add_user(&mut self, rng: &mut Rng) {
        self.user_bias.push((0.5 * rng.normal()) as f32);
        let std = self.component_std();
        self.user_vector.extend((0..self.dim).map(|_| (std * rng.normal()) as f32));
    }

    pub(super) fn add_ad(&mut self, rng: &mut Rng) {
        self.ad_bias.push((0.5 * rng.normal()) as f32);
        let std = self.component_std();
        self.ad_vector.extend((0..self.dim).map(|_| (std * rng.normal()) as f32));
    }

    pub(super) fn add_advertiser(&mut self, rng: &mut Rng) {
        self.advertiser_bias.push((0.3 * rng.normal()) as f32);
    }

    /// Ads this truth knows (a frozen truth does not know ads created after it).
    pub fn ads(&self) -> u32 {
        self.ad_bias.len() as u32
    }

    /// The logit without the global bias (used to calibrate the global bias).
    pub(super) fn relative_logit(&self, s: &Situation) -> f64 {
        let (u, a) = (s.user as usize * self.dim, s.ad as usize * self.dim);
        let dot: f32 =
            self.user_vector[u..u + self.dim].iter().zip(&self.ad_vector[a..a + self.dim]).map(|(x, y)| x * y).sum();
        f64::from(self.user_bias[s.user as usize])
            + f64::from(self.ad_bias[s.ad as usize])
            + f64::from(self.advertiser_bias[s.advertiser as usize])
            + f64::from(dot)
            + self.surface_effect[s.surface as usize]
            + self.hour_effect[s.hour as usize % 24]
            + self.affinity[s.segment as usize * self.categories + s.category as usize]
            - self.position_decay * (1.0 + f64::from(s.position)).ln()
    }

    /// The entity-specific terms of a situation's logit, for measuring how much of the truth
    /// a model without them can reach ([`crate::oracle::ablations`]).
    pub fn entity_terms(&self, s: &Situation) -> EntityTerms {
        let (u, a) = (s.user as usize * self.dim, s.ad as usize * self.dim);
        let dot: f32 =
            self.user_vector[u..u + self.dim].iter().zip(&self.ad_vector[a..a + self.dim]).map(|(x, y)| x * y).sum();
        EntityTerms {
            logit: self.global_bias + self.relative_logit(s),
            user_bias: f64::from(self.user_bias[s.user as usize]),
            ad_bias: f64::from(self.ad_bias[s.ad as usize]),
            advertiser_bias: f64::from(self.advertiser_bias[s.advertiser as usize]),
            dot: f64::from(dot),
        }
    }

    /// The true click probability.
    pub fn p(&self, s: &Situation) -> f64 {
        sigmoid(self.global_bias + self.relative_logit(s))
    }

    /// One day of drift: a random-walk step on every latent component of users and live ads, and
    /// on every affinity. Each walk is pulled back towards zero just enough to keep its variance
    /// (x <- sqrt(1 - step^2 / std^2) x + step N(0, 1)): the parameters wander, so old truth goes
    /// stale, but the click-through rate stays where it was calibrated instead of creeping up as
    /// the spread of an unbounded walk grows.
    pub(super) fn drift(&mut self, rng: &mut Rng, vector_step: f64, affinity_step: f64, live_ads: &[u32]) {
        let keep = |step: f64, std: f64| (1.0 - (step / std).powi(2)).max(0.0).sqrt();
        if vector_step > 0.0 {
            let keep = keep(vector_step, self.component_std()) as f32;
            let mut walk = |x: &mut f32| *x = keep * *x + (vector_step * rng.normal()) as f32;
            self.user_vector.iter_mut().for_each(&mut walk);
            for &ad in live_ads {
                let a = ad as usize * self.dim;
                self.ad_vector[a..a + self.dim].iter_mut().for_each(&mut walk);
            }
        }
        if affinity_step > 0.0 {
            let keep = keep(affinity_step, AFFINITY_STD);
            for x in &mut self.affinity {
                *x = keep * *x + affinity_step * rng.normal();
            }
        }
    }

    /// The largest daily step of the latent vectors (their deviation).
    pub(super) fn max_vector_step(dim: u32) -> f64 {
        VECTOR_SCALE / f64::from(dim.max(1)).powf(0.25)
    }

    /// The categories a segment likes most, best first.
    pub(super) fn favourite_categories(&self, segment: usize, count: usize) -> Vec<u32> {
        let row = &self.affinity[segment * self.categories..(segment + 1) * self.categories];
        let mut order: Vec<u32> = (0..self.categories as u32).collect();
        order.sort_by(|a, b| row[*b as usize].total_cmp(&row[*a as usize]));
        order.truncate(count.max(1));
        order
    }
}

pub(super) fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}
