//! Choosing the next token from logits: greedy, or seeded temperature / top-k / top-p sampling;
//! and the log-probabilities an API reports beside the chosen token ([`LogSoftmax`]).
//!
//! Random sampling is deterministic given the seed. The generator is xoshiro256** (Blackman and
//! Vigna), its 256-bit state filled by four successive outputs of splitmix64 started at the seed.
//! One draw per sampled token: `u = (next_u64() >> 11) / 2^53`, uniform in `[0, 1)`.
//!
//! Order of operations (as transformers' logits warpers): divide logits by the temperature,
//! keep the `top_k` largest, softmax (in f64), keep the smallest prefix (by descending
//! probability) whose mass is at least `top_p`, then draw from the kept tokens in proportion to
//! their probabilities. Ties are broken by the lower token id, so `top_k = 1` is greedy.
//!
//! The CUDA backend samples on the GPU (kernels/src/cuda/sample.cu, driven by
//! `GpuSession::set_sampler`) with the same generator, seeding, single draw per token, order,
//! tie-breaking and top-k set, bit for bit; its probabilities, top-p cut and draw are the same
//! f64 quantities summed in a different (fixed) order, so it picks the token this sampler picks
//! on the same logits unless a cumulative sum lies within about 1e-14 of the draw or of
//! `top_p`. The kernel's header lists the exact differences.

/// Why sampling failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerError {
    #[error("no logits to sample from")]
    EmptyLogits,
    #[error("logit of token {0} is NaN")]
    NanLogit(usize),
    #[error("temperature must be finite and >= 0, got {0}")]
    Temperature(f32),
    #[error("top_p must be in (0, 1], got {0}")]
    TopP(f32),
    #[error("top logprobs must be between 1 and {MAX_TOP_LOGPROBS}, got {0}")]
    TopLogprobs(usize),
}

/// The most top log-probabilities reported per position (as OpenAI's `top_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// How to pick tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// `0.0` means greedy (argmax), and the other fields are ignored.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` disables the filter.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; `1.0` disables it.
    pub top_p: f32,
    pub seed: u64,
}

impl SamplerConfig {
    /// Always the most likely token (lowest id on ties).
    pub fn greedy() -> SamplerConfig {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig::greedy()
    }
}

/// xoshiro256**, seeded through splitmix64 (see the module documentation).
#[derive(Clone, Debug)]
pub struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    pub fn seed_from_u64(seed: u64) -> Xoshiro256 {
        let mut sm = seed;
        let mut next = || {
            sm = sm.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Xoshiro256 {
            s: [next(), next(), next(), next()],
        }
    }

    /// The four state words (the GPU sampler starts from them: see `GpuSession::set_sampler`).
    pub fn state(&self) -> [u64; 4] {
        self.s
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// The most likely token; ties go to the lowest id.
pub fn argmax(logits: &[f32]) -> Result<u32, SamplerError> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if v.is_nan() {
            return Err(SamplerError::NanLogit(i));
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i as u32).ok_or(SamplerError::EmptyLogits)
}

/// A sampler: its configuration plus the generator state.
#[derive(Clone, Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: Xoshiro256,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Result<Sampler, SamplerError> {
        if !(cfg.temperature.is_finite() && cfg.temperature >= 0.0) {
            return Err(SamplerError::Temperature(cfg.temperature));
        }
        if !(cfg.top_p > 0.0 && cfg.top_p <= 1.0) {
            return Err(SamplerError::TopP(cfg.top_p));
        }
        let rng = Xoshiro256::seed_from_u64(cfg.seed);
        Ok(Sampler { cfg, rng })
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Picks the next token.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, SamplerError> {
        if self.cfg.is_greedy() {
            return argmax(logits);
        }
        let kept = self.candidates(logits)?;
        let total: f64 = kept.iter().map(|&(_, p)| p).sum();
        let target = self.rng.next_f64() * total;
        let mut cum = 0.0;
        for &(id, p) in &kept {
            cum += p;
            if cum > target {
                return Ok(id);
            }
        }
        // Rounding can leave `target` at the very top; the last kept token takes it.
        kept.last()
            .map(|&(id, _)| id)
            .ok_or(SamplerError::EmptyLogits)
    }

    /// The tokens that survive temperature, top-k and top-p, with their probabilities (not
    /// renormalized after top-p), most likely first.
    pub fn candidates(&self, logits: &[f32]) -> Result<Vec<(u32, f64)>, SamplerError> {
        if logits.is_empty() {
            return Err(SamplerError::EmptyLogits);
        }
        if let Some(i) = logits.iter().position(|v| v.is_nan()) {
            return Err(SamplerError::NanLogit(i));
        }
        let t = self.cfg.temperature as f64;
        let mut order: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u32, v as f64 / t))
            .collect();
        // Descending by scaled logit, ascending id on ties: a total, deterministic order.
        order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.cfg.top_k > 0 {
            order.truncate(self.cfg.top_k);
        }
        let max = order[0].1;
        let mut z = 0.0;
        for e in order.iter_mut() {
            e.1 = (e.1 - max).exp();
            z += e.1;
        }
        for e in order.iter_mut() {
            e.1 /= z;
        }
        if self.cfg.top_p < 1.0 {
            let p = self.cfg.top_p as f64;
            let mut cum = 0.0;
            let mut keep = order.len();
            for (i, e) in order.iter().enumerate() {
                cum += e.1;
                if cum >= p {
                    keep = i + 1;
                    break;
                }
            }
            order.truncate(keep);
        }
        Ok(order)
    }
}

/// Log-probabilities of one position: the log-softmax of the raw logits (no temperature or
/// filter, as engines' APIs report them), in f64 so that a vocabulary of 10^5 tokens sums
/// without visible rounding.
#[derive(Debug)]
pub struct LogSoftmax<'a> {
    logits: &'a [f32],
    /// log(sum(exp(logits))), taken around the largest logit so that no exp overflows.
    log_sum_exp: f64,
}

impl<'a> LogSoftmax<'a> {
    pub fn new(logits: &'a [f32]) -> Result<LogSoftmax<'a>, SamplerError> {
        if logits.is_empty() {
            return Err(SamplerError::EmptyLogits);
        }
        if let Some(i) = logits.iter().position(|v| v.is_nan()) {
            return Err(SamplerError::NanLogit(i));
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
        Ok(LogSoftmax {
            logits,
            log_sum_exp: max + sum.ln(),
        })
    }

    /// The log-probability of token `id` (`-inf` for an id past the logits).
    pub fn logprob(&self, id: u32) -> f64 {
        self.logits
            .get(id as usize)
            .map_or(f64::NEG_INFINITY, |&v| v as f64 - self.log_sum_exp)
    }

    /// The `k` most likely tokens with their log-probabilities, most likely first; ties go to
    /// the lower id, as in [`argmax`], so the greedy token is always the first.
    pub fn top(&self, k: usize) -> Result<Vec<(u32, f64)>, SamplerError> {
        if !(1..=MAX_TOP_LOGPROBS).contains(&k) {
            return Err(SamplerError::TopLogprobs(k));
        }
        let logits = self.logits;
        // Equal as `argmax` compares (0.0 == -0.0); there is no NaN (checked in `new`).
        let before = |a: &u32, b: &u32| {
            logits[*b as usize]
                .partial_cmp(&logits[*a as usize])
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(b))
        };
        let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
        let k = k.min(ids.len());
        // Partial selection: O(vocabulary) rather than a full sort at every position.
        if k < ids.len() {
            ids.select_nth_unstable_by(k - 1, before);
            ids.truncate(k);
        }
        ids.sort_by(before);
        Ok(ids.into_iter().map(|id| (id, self.logprob(id))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_matches_the_definition() {
        let logits = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let ls = LogSoftmax::new(&logits).unwrap();
        let z: f64 = logits.iter().map(|&v| (v as f64).exp()).sum();
        for (i, &v) in logits.iter().enumerate() {
            let want = (v as f64).exp().ln() - z.ln();
            assert!((ls.logprob(i as u32) - want).abs() < 1e-12, "{i}");
        }
        let total: f64 = (0..5).map(|i| ls.logprob(i).exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert_eq!(ls.logprob(5), f64::NEG_INFINITY);
    }

    #[test]
    fn top_is_sorted_with_ties_to_the_lower_id_as_argmax() {
        let logits = [1.0f32, 3.0, -2.0, 3.0, 0.5, -0.0, 0.0];
        let ls = LogSoftmax::new(&logits).unwrap();
        let ids: Vec<u32> = ls.top(4).unwrap().iter().map(|&(id, _)| id).collect();
        assert_eq!(ids, [1, 3, 0, 4]);
        assert_eq!(ids[0], argmax(&logits).unwrap());
        // More than the vocabulary: all of it, in order.
        let all: Vec<u32> = ls.top(20).unwrap().iter().map(|&(id, _)| id).collect();
        assert_eq!(all, [1, 3, 0, 4, 5, 6, 2]);
        // Huge logits do not overflow.
        let big = [1e30f32, 1e30 - 1e24, -1e30];
        let top = LogSoftmax::new(&big).unwrap().top(3).unwrap();
        assert!(top
            .iter()
            .all(|&(_, lp)| lp.is_finite() || lp == f64::NEG_INFINITY));
        assert!(top[0].1 <= 0.0);
    }

    #[test]
    fn bad_k_and_bad_logits_are_errors() {
        let ls = LogSoftmax::new(&[0.0, 1.0]).unwrap();
        assert_eq!(ls.top(0), Err(SamplerError::TopLogprobs(0)));
        assert_eq!(ls.top(21), Err(SamplerError::TopLogprobs(21)));
        assert_eq!(
            LogSoftmax::new(&[0.0, f32::NAN]).err(),
            Some(SamplerError::NanLogit(1))
        );
        assert_eq!(LogSoftmax::new(&[]).err(), Some(SamplerError::EmptyLogits));
    }
}
