//! The ground truth: every parameter of the true click probability.
//!
//! logit(p) = global + user bias + ad bias + advertiser bias + <user vector, ad vector>
//!          + surface effect + hour-of-day effect + segment x category affinity
//!          - position_decay * ln(1 + position)
//!
//! User vectors and biases, and ad vectors, are composed of shared attribute components and an
//! individual deviation ([`super::taste`]).

use super::{
    WorldConfig,
    rng::Rng,
    taste::{ATTRIBUTES, Taste},
};

/// The stream of the shared taste components' draws: apart from the main stream, so a world
/// whose taste is wholly individual draws exactly what it drew before shared taste existed.
const TASTE_STREAM: u64 = 7;

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
    /// What only the user's own history can tell: its bias deviation plus its vector deviation
    /// . the ad vector (zero when taste is wholly shared).
    pub user_individual: f64,
    /// What only the ad's own history can tell: its bias deviation plus its vector deviation .
    /// the user's shared vector.
    pub ad_individual: f64,
}

/// The parameters of the truth at one moment. Cloning it freezes a day's truth (to measure
/// how much the world drifted since).
#[derive(Debug, Clone)]
pub struct Truth {
    pub(super) global_bias: f64,
    pub(super) dim: usize,
    /// Composed from `user_taste` (and `ad_taste`), kept whole so a dot product reads two rows.
    pub(super) user_bias: Vec<f32>,
    pub(super) user_vector: Vec<f32>,
    pub(super) ad_bias: Vec<f32>,
    pub(super) ad_vector: Vec<f32>,
    user_taste: Taste,
    ad_taste: Taste,
    taste_rng: Rng,
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

/// Adds an entity to `taste` and its composed bias and vector to the whole ones.
fn add(taste: &mut Taste, (biases, vectors): (&mut Vec<f32>, &mut Vec<f32>), own: Own, attributes: [u32; ATTRIBUTES]) {
    taste.add(&own.vector, own.bias, attributes);
    let (e, dim) = (biases.len(), own.vector.len());
    vectors.resize(vectors.len() + dim, 0.0);
    biases.push(taste.compose(e, &mut vectors[e * dim..(e + 1) * dim]));
}

/// How the shared part of a user's taste splits between its segment, country and device, and
/// an ad's between its category, advertiser and format: mostly the attributes with few values,
/// whose components every entity sharing them teaches a model (an advertiser has a handful of
/// ads and a few clicks a day).
const USER_WEIGHTS: [f64; ATTRIBUTES] = [0.5, 0.3, 0.2];
const AD_WEIGHTS: [f64; ATTRIBUTES] = [0.6, 0.1, 0.3];

/// Deviations of user and ad biases.
const USER_BIAS_STD: f64 = 0.5;
const AD_BIAS_STD: f64 = 0.5;

/// An entity's own parts, drawn before its attributes.
#[derive(Debug)]
pub(super) struct Own {
    bias: f32,
    vector: Vec<f32>,
}

/// Deviation of the segment x category affinities.
pub(super) const AFFINITY_STD: f64 = 0.6;

impl Truth {
    /// Draws the entity-independent parameters and the shared taste components; entities add
    /// theirs as they are created.
    pub(super) fn new(rng: &mut Rng, config: &WorldConfig) -> Self {
        let dim = config.latent_dim as usize;
        let phase = rng.f64() * std::f64::consts::TAU;
        let mut hour_effect = [0.0; 24];
        for (h, effect) in hour_effect.iter_mut().enumerate() {
            *effect = 0.3 * (std::f64::consts::TAU * h as f64 / 24.0 + phase).sin();
        }
        let surface_effect = (0..config.surfaces.len()).map(|_| 0.3 * rng.normal()).collect();
        let (segments, categories) = (config.segments as usize, config.categories as usize);
        let affinity = (0..segments * categories).map(|_| AFFINITY_STD * rng.normal()).collect();
        let mut taste_rng = Rng::new(config.seed, TASTE_STREAM);
        let std = Self::max_vector_step(config.latent_dim);
        let user_taste = Taste::new(
            &mut taste_rng,
            dim,
            config.user_individual_share,
            ([segments, config.countries as usize, config.devices as usize], USER_WEIGHTS),
            (std, USER_BIAS_STD),
        );
        let ad_taste = Taste::new(
            &mut taste_rng,
            dim,
            config.ad_individual_share,
            ([categories, config.advertisers as usize, config.formats as usize], AD_WEIGHTS),
            (std, AD_BIAS_STD),
        );
        Self {
            global_bias: 0.0,
            dim,
            user_bias: Vec::new(),
            user_vector: Vec::new(),
            ad_bias: Vec::new(),
            ad_vector: Vec::new(),
            user_taste,
            ad_taste,
            taste_rng,
            advertiser_bias: Vec::new(),
            surface_effect,
            hour_effect,
            affinity,
            categories,
            position_decay: config.position_decay,
        }
    }

    fn component_std(&self) -> f64 {
        Self::max_vector_step(self.dim as u32)
    }

    /// Draws a user's own parts; [`Truth::add_user`] adds the user once its attributes are
    /// drawn too.
    pub(super) fn draw_user(&self, rng: &mut Rng) -> Own {
        self.draw_own(rng, USER_BIAS_STD * self.user_taste.individual_scale(), self.user_taste.individual_scale())
    }

    /// Adds a user with its own parts and its segment, country and device.
    pub(super) fn add_user(&mut self, own: Own, attributes: [u32; ATTRIBUTES]) {
        add(&mut self.user_taste, (&mut self.user_bias, &mut self.user_vector), own, attributes);
    }

    /// Draws an ad's own parts; [`Truth::add_ad`] adds the ad once its attributes are drawn too.
    pub(super) fn draw_ad(&self, rng: &mut Rng) -> Own {
        self.draw_own(rng, AD_BIAS_STD * self.ad_taste.individual_scale(), self.ad_taste.individual_scale())
    }

    /// Adds an ad with its own parts and its category, advertiser and format.
    pub(super) fn add_ad(&mut self, own: Own, attributes: [u32; ATTRIBUTES]) {
        add(&mut self.ad_taste, (&mut self.ad_bias, &mut self.ad_vector), own, attributes);
    }

    fn draw_own(&self, rng: &mut Rng, bias_std: f64, vector_scale: f64) -> Own {
        // The bias first, then the vector: the order of the draws before shared taste.
        let bias = (bias_std * rng.normal()) as f32;
        let std = self.component_std() * vector_scale;
        Own { bias, vector: (0..self.dim).map(|_| (std * rng.normal()) as f32).collect() }
    }

    pub(super) fn add_advertiser(&mut self, rng: &mut Rng) {
        self.advertiser_bias.push((0.3 * rng.normal()) as f32);
    }

    #[cfg(test)]
    pub(super) fn user_taste(&self) -> &Taste {
        &self.user_taste
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
        let ad_vector = &self.ad_vector[a..a + self.dim];
        let (user_deviation, user_bias_deviation) = self.user_taste.deviation(s.user as usize);
        let user_dot: f32 = user_deviation.iter().zip(ad_vector).map(|(x, y)| x * y).sum();
        let (ad_deviation, ad_bias_deviation) = self.ad_taste.deviation(s.ad as usize);
        let ad_dot: f32 = self.user_vector[u..u + self.dim]
            .iter()
            .zip(user_deviation)
            .zip(ad_deviation)
            .map(|((whole, own), y)| (whole - own) * y)
            .sum();
        EntityTerms {
            logit: self.global_bias + self.relative_logit(s),
            user_bias: f64::from(self.user_bias[s.user as usize]),
            ad_bias: f64::from(self.ad_bias[s.ad as usize]),
            advertiser_bias: f64::from(self.advertiser_bias[s.advertiser as usize]),
            dot: f64::from(dot),
            user_individual: f64::from(user_bias_deviation) + f64::from(user_dot),
            ad_individual: f64::from(ad_bias_deviation) + f64::from(ad_dot),
        }
    }

    /// The true click probability.
    pub fn p(&self, s: &Situation) -> f64 {
        sigmoid(self.global_bias + self.relative_logit(s))
    }

    /// The learnable ceiling's click probability: the truth without the individual taste
    /// deviations of users and ads (what only each one's own history could tell), the best a
    /// model that learns taste from attributes can predict.
    pub fn ceiling_p(&self, s: &Situation) -> f64 {
        let terms = self.entity_terms(s);
        sigmoid(terms.logit - terms.user_individual - terms.ad_individual)
    }

    /// One day of drift: a random-walk step on every latent component of users and live ads, and
    /// on every affinity. Each walk is pulled back towards zero just enough to keep its variance
    /// (x <- sqrt(1 - step^2 / std^2) x + step N(0, 1)): the parameters wander, so old truth goes
    /// stale, but the click-through rate stays where it was calibrated instead of creeping up as
    /// the spread of an unbounded walk grows.
    pub(super) fn drift(&mut self, rng: &mut Rng, vector_step: f64, affinity_step: f64, live_ads: &[u32]) {
        if vector_step > 0.0 {
            let walk = (vector_step, self.component_std());
            let users: Vec<usize> = (0..self.user_bias.len()).collect();
            self.user_taste.drift(rng, &mut self.taste_rng, walk, &users);
            let ads: Vec<usize> = live_ads.iter().map(|&a| a as usize).collect();
            self.ad_taste.drift(rng, &mut self.taste_rng, walk, &ads);
            // Shared components moved for every entity: recompose them all (biases do not drift).
            let dim = self.dim;
            for (u, row) in self.user_vector.chunks_exact_mut(dim).enumerate() {
                self.user_taste.compose(u, row);
            }
            for (a, row) in self.ad_vector.chunks_exact_mut(dim).enumerate() {
                self.ad_taste.compose(a, row);
            }
        }
        if affinity_step > 0.0 {
            let keep = (1.0 - (affinity_step / AFFINITY_STD).powi(2)).max(0.0).sqrt();
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
