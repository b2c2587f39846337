//! GEMV throughput on bf16 matrices of SmolLM2-135M's shapes, in GB/s of weights read.
//!
//! Run: `cargo run -p cllm-kernels --release --example gemv_bench [-- FORM]` where FORM is
//! bf16 (default), f32, f16, int8, int8g (group-wise int8, groups of 64) or int4. Threads:
//! `RAYON_NUM_THREADS`.

use std::time::Instant;

use cllm_kernels::cpu::{gemv, matmul, prepare};
use cllm_kernels::{Weight, WeightData};
use half::{bf16, f16};

fn weight(rows: usize, cols: usize, form: &str) -> Weight {
    let n = rows * cols;
    let v = |i: usize| ((i * 2654435761) % 1000) as f32 / 1000.0 - 0.5;
    let data = match form {
        "f32" => WeightData::F32((0..n).map(v).collect()),
        "f16" => WeightData::F16((0..n).map(|i| f16::from_f32(v(i))).collect()),
        "int8" => WeightData::Int8Row {
            q: (0..n).map(|i| (i % 251) as u8 as i8).collect(),
            scales: vec![0.01; rows],
        },
        "int8g" => WeightData::Int8Group {
            q: (0..n).map(|i| (i % 251) as u8 as i8).collect(),
            scales: vec![0.01; rows * (cols / 64)],
            group_size: 64,
        },
        "int4" => {
            let groups = rows * cols.div_ceil(32);
            WeightData::Int4 {
                packed: (0..n / 2).map(|i| i as u8).collect(),
                scales: vec![f16::from_f32(0.01); groups],
                mins: vec![f16::from_f32(-0.08); groups],
                group_size: 32,
            }
        }
        _ => WeightData::Bf16((0..n).map(|i| bf16::from_f32(v(i))).collect()),
    };
    prepare(Weight { rows, cols, data })
}

/// Plain read bandwidth of this machine (xor over 256 MiB, split over the rayon threads): the
/// ceiling a memory-bound GEMV can approach.
fn read_bandwidth() -> f64 {
    use rayon::prelude::*;
    let v: Vec<u64> = (0..(256usize << 20) / 8).map(|i| i as u64).collect();
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let x = v
            .par_chunks(1 << 16)
            .map(|c| c.iter().fold(0u64, |a, &b| a ^ b))
            .reduce(|| 0, |a, b| a ^ b);
        let dt = t.elapsed().as_secs_f64();
        std::hint::black_box(x);
        best = best.max((v.len() * 8) as f64 / dt / 1e9);
    }
    best
}

fn main() {
    let form = std::env::args().nth(1).unwrap_or_else(|| "bf16".into());
    println!(
        "form {form}, {} rayon threads",
        rayon::current_num_threads()
    );
    println!("plain read bandwidth: {:.2} GB/s", read_bandwidth());
    for (rows, cols) in [(576, 1536), (1536, 576), (49152, 576)] {
        let w = weight(rows, cols, &form);
        let x: Vec<f32> = (0..cols).map(|i| (i as f32).sin()).collect();
        let mut y = vec![0f32; rows];
        let bytes = w.resident_bytes() as f64;
        // Best of 7 rounds of ~0.3 GB each (the machine may be shared; the best round is the
        // least disturbed one). The first call warms up.
        let reps = ((3e8 / bytes) as usize).max(3);
        gemv(&w, &x, &mut y).unwrap();
        let mut dt = f64::MAX;
        for _ in 0..7 {
            let t = Instant::now();
            for _ in 0..reps {
                gemv(&w, &x, &mut y).unwrap();
            }
            dt = dt.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        println!(
            "{rows:>6} x {cols:<5} {:>8.1} us/call  {:>6.2} GB/s  (y[0] = {})",
            dt * 1e6,
            bytes / dt / 1e9,
            y[0]
        );
    }
    // The same shape streamed from memory: enough copies that they do not fit the caches, one
    // product each in turn, as a decode step reads its layers.
    for (rows, cols) in [(1536, 576), (576, 1536)] {
        let one = weight(rows, cols, &form).resident_bytes();
        let copies = ((256usize << 20) / one).max(2);
        let ws: Vec<Weight> = (0..copies).map(|_| weight(rows, cols, &form)).collect();
        let x: Vec<f32> = (0..cols).map(|i| (i as f32).sin()).collect();
        let mut y = vec![0f32; rows];
        let mut dt = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for w in &ws {
                gemv(w, &x, &mut y).unwrap();
            }
            dt = dt.min(t.elapsed().as_secs_f64() / copies as f64);
        }
        println!(
            "{rows:>6} x {cols:<5} {:>8.1} us/call  {:>6.2} GB/s  from memory ({copies} copies)",
            dt * 1e6,
            one as f64 / dt / 1e9,
        );
    }
    // Batched product (prefill): 128 activation rows against one matrix, in multiply-adds/s.
    let (rows, cols, n) = (1536, 576, 128);
    let w = weight(rows, cols, &form);
    let x: Vec<f32> = (0..n * cols).map(|i| (i as f32).sin()).collect();
    let mut y = vec![0f32; n * rows];
    let mut dt = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        matmul(&w, &x, n, &mut y).unwrap();
        dt = dt.min(t.elapsed().as_secs_f64());
    }
    println!(
        "batched {rows} x {cols} by {n} rows: {:.1} ms, {:.2} G multiply-adds/s",
        dt * 1e3,
        (rows * cols * n) as f64 / dt / 1e9
    );
}
