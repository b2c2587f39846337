//! Sampling: seeded determinism, greedy equivalences, and the top-p cut.

use cllm_runtime::{argmax, Sampler, SamplerConfig, SamplerError, Xoshiro256};

fn logits() -> Vec<f32> {
    (0..50).map(|i| ((i * 7919) % 53) as f32 / 10.0).collect()
}

fn cfg(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplerConfig {
    SamplerConfig {
        temperature,
        top_k,
        top_p,
        seed,
    }
}

fn draw(c: SamplerConfig, n: usize) -> Vec<u32> {
    let mut s = Sampler::new(c).unwrap();
    (0..n).map(|_| s.sample(&logits()).unwrap()).collect()
}

#[test]
fn same_seed_same_tokens() {
    let a = draw(cfg(1.0, 0, 1.0, 42), 200);
    assert_eq!(a, draw(cfg(1.0, 0, 1.0, 42), 200));
    assert_ne!(a, draw(cfg(1.0, 0, 1.0, 43), 200));
    // Not degenerate: several distinct tokens come out.
    let mut d = a.clone();
    d.sort();
    d.dedup();
    assert!(d.len() > 5);
}

#[test]
fn prng_is_the_documented_xoshiro256starstar() {
    // splitmix64(0) seeding, then xoshiro256**: first outputs are fixed forever.
    let mut r = Xoshiro256::seed_from_u64(0);
    let first: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
    let mut again = Xoshiro256::seed_from_u64(0);
    assert_eq!(first, (0..3).map(|_| again.next_u64()).collect::<Vec<_>>());
    // Reference values computed from the published algorithms.
    assert_eq!(first[0], 0x99EC5F36CB75F2B4);
}

#[test]
fn top_k_1_is_greedy_and_ties_go_to_lowest_id() {
    let g = argmax(&logits()).unwrap();
    assert!(draw(cfg(0.8, 1, 1.0, 7), 50).iter().all(|&t| t == g));
    assert!(draw(cfg(0.0, 0, 1.0, 7), 5).iter().all(|&t| t == g));
    let tie = [1.0, 3.0, 0.5, 3.0];
    assert_eq!(argmax(&tie).unwrap(), 1);
    let mut s = Sampler::new(cfg(1.0, 1, 1.0, 1)).unwrap();
    assert_eq!(s.sample(&tie).unwrap(), 1);
}

#[test]
fn top_p_keeps_smallest_set_reaching_p() {
    // Probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625 (logits = ln p).
    let p = [0.5f64, 0.25, 0.125, 0.0625, 0.0625];
    let l: Vec<f32> = p.iter().map(|v| v.ln() as f32).collect();
    let kept = |top_p: f32| {
        Sampler::new(cfg(1.0, 0, top_p, 0))
            .unwrap()
            .candidates(&l)
            .unwrap()
            .iter()
            .map(|c| c.0)
            .collect::<Vec<_>>()
    };
    assert_eq!(kept(0.5), vec![0]);
    assert_eq!(kept(0.6), vec![0, 1]);
    assert_eq!(kept(0.75), vec![0, 1]);
    assert_eq!(kept(0.8), vec![0, 1, 2]);
    assert_eq!(kept(1.0).len(), 5);
    // Sampling only ever returns kept tokens.
    assert!(draw_from(&l, cfg(1.0, 0, 0.6, 3), 300)
        .iter()
        .all(|&t| t <= 1));
}

fn draw_from(l: &[f32], c: SamplerConfig, n: usize) -> Vec<u32> {
    let mut s = Sampler::new(c).unwrap();
    (0..n).map(|_| s.sample(l).unwrap()).collect()
}

#[test]
fn frequencies_follow_probabilities() {
    let l = [0.0f32, (3.0f32).ln()];
    let t = draw_from(&l, cfg(1.0, 0, 1.0, 9), 4000);
    let ones = t.iter().filter(|&&x| x == 1).count() as f64 / 4000.0;
    assert!((ones - 0.75).abs() < 0.03, "{ones}");
}

#[test]
fn bad_input_is_an_error() {
    assert_eq!(
        Sampler::new(cfg(-1.0, 0, 1.0, 0)).unwrap_err(),
        SamplerError::Temperature(-1.0)
    );
    assert_eq!(
        Sampler::new(cfg(1.0, 0, 0.0, 0)).unwrap_err(),
        SamplerError::TopP(0.0)
    );
    assert_eq!(argmax(&[]).unwrap_err(), SamplerError::EmptyLogits);
    assert_eq!(
        argmax(&[0.0, f32::NAN]).unwrap_err(),
        SamplerError::NanLogit(1)
    );
}
