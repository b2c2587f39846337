//! Matrix products `y = W x` for a [`Weight`] in any storage form, dequantizing inside the product.
//!
//! [`matmul`] multiplies one weight (`rows x cols`) by `n` activation rows (`n x cols`, row-major)
//! and writes `n x rows`. [`gemv`] is `matmul` with `n = 1`: the same code path, so a row computed
//! in a batch (prefill) has the bits of the same row computed alone (decode).
//!
//! Each output element is one fixed-order dot product ([`dot`](mod@super::dot)) of a weight row,
//! decoded exactly in registers chunk by chunk (see `rows`), with an activation row. Int8 weights
//! (per row or per group) and int4 weights of most group sizes instead take integer products
//! with the activation row in exact fixed point (tasks in `fixed_task`, kernels in `fixed` and
//! `fixed4`); an activation row without a fixed form (a non-finite value) takes the float path,
//! where per-row int8 runs on the unscaled `q as f32` row and is then multiplied by the row
//! scale, and group-wise int8 and int4 apply each group's parameters to its values. The work is
//! split by weight rows only (module `pool`), so the thread count changes nothing in the
//! result.

use std::array::from_fn;

use rayon::prelude::*;

use super::decode::decode_row_unscaled;
use super::dot::Lanes;
use super::error::{check_len, KernelError};
use super::fixed::FixedRow;
use super::fixed4::Fixed4;
use super::fixed_task::{fixed_task, is_fixed, is_fixed_int4, row_alignment, Fixed};
use super::isa::{isa, multiversion, Isa};
use super::pool;
use super::rows::{group_chunk_shift, Bf16Row, F16Row, I4Row, I8GroupRow, I8Row, Row};
use crate::weights::{Weight, WeightData};

/// Activation rows handled per pass over a block of weight rows: their f32 values stay in cache
/// while the block's rows are decoded once and reused for all of them.
const TOKEN_BLOCK: usize = 32;

/// Weight rows taken side by side when fewer than four activation rows remain (decode): four
/// independent accumulations, so the product is not held to one addition's latency per chunk.
pub(super) const ROW_BLOCK: usize = 4;

/// Tasks per thread a large product is cut into, claimed one by one. Contiguous rows per task
/// keep the prefetch ahead within a thread's own rows; 16 per thread measured slower, 2 the same.
const TASKS_PER_THREAD: usize = 4;

/// Smallest amount of multiply-adds worth a task.
const MIN_TASK_WORK: usize = 32 * 1024;

/// `y = W x` for one vector: `x.len() == cols`, `y.len() == rows`.
pub fn gemv(w: &Weight, x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
    matmul(w, x, 1, y)
}

/// `y[t] = W x[t]` for `n` rows: `x` is `n x cols`, `y` is `n x rows`, both row-major.
pub fn matmul(w: &Weight, x: &[f32], n: usize, y: &mut [f32]) -> Result<(), KernelError> {
    matmul_with(isa(), x, n, &mut [(w, y)])
}

/// Several products of the same input in one parallel pass: for each `(W, y)` in `jobs`,
/// `y[t] = W x[t]` exactly as [`matmul`] computes it (same bits). One pass instead of one per
/// weight saves rayon's fork/join per weight (q/k/v, gate/up) in single-token decode.
pub fn matmul_many(
    x: &[f32],
    n: usize,
    jobs: &mut [(&Weight, &mut [f32])],
) -> Result<(), KernelError> {
    matmul_with(isa(), x, n, jobs)
}

/// A block of weight rows and where its results go (`rows x n`, row-major when `n > 1`).
struct Task<'a> {
    w: &'a Weight,
    row0: usize,
    out: &'a mut [f32],
}

pub(crate) fn matmul_with(
    isa: Isa,
    x: &[f32],
    n: usize,
    jobs: &mut [(&Weight, &mut [f32])],
) -> Result<(), KernelError> {
    for (w, y) in jobs.iter() {
        w.validate()?;
        check_len("matmul input (n x cols)", n * w.cols, x.len())?;
        check_len("matmul output (n x rows)", n * w.rows, y.len())?;
    }
    if n == 0 {
        return Ok(());
    }
    let threads = rayon::current_num_threads().max(1);
    // Int8 and int4 weights multiply the activation rows in fixed point, made once for all of
    // them (with the int4 layout where an int4 weight needs it).
    let fixed: Vec<Option<FixedRow>> = if jobs.iter().any(|(w, _)| is_fixed(w)) {
        let cols = x.len() / n;
        if n == 1 {
            vec![FixedRow::new(x)]
        } else {
            x.par_chunks(cols).map(FixedRow::new).collect()
        }
    } else {
        Vec::new()
    };
    let fixed4: Vec<Option<Fixed4>> = if jobs.iter().any(|(w, _)| is_fixed_int4(w)) {
        fixed.iter().map(|f| f.as_ref().map(Fixed4::new)).collect()
    } else {
        Vec::new()
    };
    // With several rows per token, tasks own blocks of weight rows and so write a row-major
    // `rows x n` transpose of each output, copied back below.
    let mut transposed: Vec<Vec<f32>> = if n > 1 {
        jobs.iter().map(|(w, _)| vec![0f32; w.rows * n]).collect()
    } else {
        Vec::new()
    };
    let mut tasks: Vec<Task<'_>> = Vec::new();
    let mut transposed_iter = transposed.iter_mut();
    for (w, y) in jobs.iter_mut() {
        let (rows, cols) = (w.rows, w.cols);
        let min_rows = MIN_TASK_WORK.div_ceil((cols * n.min(TOKEN_BLOCK)).max(1));
        // Whole blocks of rows, which single-token products take side by side.
        let chunk = rows
            .div_ceil(threads * TASKS_PER_THREAD)
            .max(min_rows)
            .max(1)
            .next_multiple_of(row_alignment(w));
        let out: &mut [f32] = if n > 1 {
            match transposed_iter.next() {
                Some(t) => t,
                None => continue, // one buffer per job was made above
            }
        } else {
            y
        };
        if out.is_empty() {
            continue;
        }
        for (i, block) in out.chunks_mut(chunk * n).enumerate() {
            tasks.push(Task {
                w,
                row0: i * chunk,
                out: block,
            });
        }
    }
    pool::for_each(tasks, |t| {
        if is_fixed(t.w) {
            let fixed = Fixed {
                rows: &fixed,
                int4: &fixed4,
            };
            fixed_task(isa, t.w, x, n, t.row0, t.out, fixed);
        } else {
            let mut buf = vec![0f32; ROW_BLOCK * t.w.cols];
            rows_task(isa, t.w, x, n, t.row0, t.out, &mut buf, 0..n);
        }
    });
    for (yt, (w, y)) in transposed.iter().zip(jobs.iter_mut()) {
        let rows = w.rows;
        // Transpose in bands of 64 weight rows: the band's `yt` cache lines stay in L1 while
        // every activation row's slice of `y` is written sequentially.
        for r0 in (0..rows).step_by(64) {
            let r1 = (r0 + 64).min(rows);
            for (t, yrow) in y.chunks_exact_mut(rows).enumerate() {
                for (r, out) in (r0..r1).zip(&mut yrow[r0..r1]) {
                    *out = yt[r * n + t];
                }
            }
        }
    }
    Ok(())
}

multiversion!(pub(super) fn rows_task => rows_task_generic(
    w: &Weight,
    x: &[f32],
    n: usize,
    row0: usize,
    out: &mut [f32],
    buf: &mut [f32],
    tokens: std::ops::Range<usize>,
));

/// Computes weight rows `row0..row0 + out.len() / n` against activation rows `tokens` (of `n`);
/// `out[i * n + t]` receives row `row0 + i` times activation row `t`. `buf` (at least
/// `ROW_BLOCK * cols` values) is scratch for int4 group parameters or, for group sizes the fused
/// paths do not take, the decoded rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows_task_generic(
    lanes: impl Lanes,
    w: &Weight,
    x: &[f32],
    n: usize,
    row0: usize,
    out: &mut [f32],
    buf: &mut [f32],
    tokens: std::ops::Range<usize>,
) {
    let cols = w.cols;
    let nrows = out.len() / n;
    for t0 in tokens.clone().step_by(TOKEN_BLOCK) {
        let t1 = (t0 + TOKEN_BLOCK).min(tokens.end);
        let mut first = 0;
        if t1 - t0 < 4 {
            while first + ROW_BLOCK <= nrows {
                let o = &mut out[first * n..(first + ROW_BLOCK) * n];
                row_block(lanes, w, x, n, row0 + first, t0, t1, o, buf);
                first += ROW_BLOCK;
            }
        }
        for i in first..nrows {
            let r = row0 + i;
            let o = &mut out[i * n..(i + 1) * n];
            let span = r * cols..(r + 1) * cols;
            match &w.data {
                WeightData::F32(v) => dots(lanes, &v[span], x, t0, t1, o),
                WeightData::Bf16(v) => dots(lanes, Bf16Row(&v[span]), x, t0, t1, o),
                WeightData::F16(v) => dots(lanes, F16Row(&v[span]), x, t0, t1, o),
                WeightData::Int8Row { q, scales } => {
                    dots(lanes, I8Row(&q[span]), x, t0, t1, o);
                    for v in &mut o[t0..t1] {
                        *v *= scales[r];
                    }
                }
                WeightData::Int8Group {
                    q,
                    scales,
                    group_size,
                } => match group_chunk_shift(*group_size) {
                    Some(chunk_shift) => {
                        let groups = cols / group_size;
                        let row = I8GroupRow {
                            q: &q[span],
                            scales: &scales[r * groups..(r + 1) * groups],
                            chunk_shift,
                        };
                        dots(lanes, row, x, t0, t1, o);
                    }
                    None => {
                        // Same values as the fused row (`q as f32 * scale`), so same bits.
                        decode_row_unscaled(w, r, buf);
                        dots(lanes, &buf[..cols], x, t0, t1, o);
                    }
                },
                WeightData::Int4 {
                    packed,
                    scales,
                    mins,
                    group_size,
                } => match group_chunk_shift(*group_size) {
                    Some(chunk_shift) => {
                        let groups = cols.div_ceil(*group_size);
                        let (s, rest) = buf.split_at_mut(groups);
                        let m = &mut rest[..groups];
                        // Exact f16 -> f32, inlined for the ISA this copy is compiled for.
                        let gspan = r * groups..(r + 1) * groups;
                        lanes.widen_f16(&scales[gspan.clone()], s);
                        lanes.widen_f16(&mins[gspan], m);
                        let row = I4Row {
                            packed: &packed[span.start / 2..span.end / 2],
                            scales: s,
                            mins: m,
                            group_size: *group_size,
                            chunk_shift,
                        };
                        dots(lanes, row, x, t0, t1, o);
                    }
                    None => {
                        decode_row_unscaled(w, r, buf);
                        dots(lanes, &buf[..cols], x, t0, t1, o);
                    }
                },
                // Activation rows without a fixed form only: the decoded values, the same bits
                // as the row-major layout's fused rows.
                WeightData::Int4Blocked(_) => {
                    decode_row_unscaled(w, r, buf);
                    dots(lanes, &buf[..cols], x, t0, t1, o);
                }
            }
        }
    }
}

/// Weight rows `r0..r0 + 4` against activation rows `t0..t1`, one activation row at a time,
/// the four weight rows side by side; `out[j * n + t]` receives row `r0 + j`. Each result has
/// the bits the single-row path gives it.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn row_block(
    lanes: impl Lanes,
    w: &Weight,
    x: &[f32],
    n: usize,
    r0: usize,
    t0: usize,
    t1: usize,
    out: &mut [f32],
    buf: &mut [f32],
) {
    let cols = w.cols;
    let span = |j: usize| (r0 + j) * cols..(r0 + j + 1) * cols;
    let rows4 = |j| r0 + j;
    match &w.data {
        WeightData::F32(v) => dots4(lanes, from_fn(|j| &v[span(j)]), x, n, t0, t1, out),
        WeightData::Bf16(v) => dots4(lanes, from_fn(|j| Bf16Row(&v[span(j)])), x, n, t0, t1, out),
        WeightData::F16(v) => dots4(lanes, from_fn(|j| F16Row(&v[span(j)])), x, n, t0, t1, out),
        WeightData::Int8Row { q, scales } => {
            dots4(lanes, from_fn(|j| I8Row(&q[span(j)])), x, n, t0, t1, out);
            for j in 0..ROW_BLOCK {
                for v in &mut out[j * n + t0..j * n + t1] {
                    *v *= scales[rows4(j)];
                }
            }
        }
        WeightData::Int8Group {
            q,
            scales,
            group_size,
        } => match group_chunk_shift(*group_size) {
            Some(chunk_shift) => {
                let groups = cols / group_size;
                let rows = from_fn(|j| I8GroupRow {
                    q: &q[span(j)],
                    scales: &scales[rows4(j) * groups..(rows4(j) + 1) * groups],
                    chunk_shift,
                });
                dots4(lanes, rows, x, n, t0, t1, out);
            }
            None => decoded4(lanes, w, r0, x, n, t0, t1, out, buf),
        },
        WeightData::Int4 {
            packed,
            scales,
            mins,
            group_size,
        } => match group_chunk_shift(*group_size) {
            Some(chunk_shift) => {
                let groups = cols.div_ceil(*group_size);
                let (s, rest) = buf.split_at_mut(ROW_BLOCK * groups);
                let m = &mut rest[..ROW_BLOCK * groups];
                for j in 0..ROW_BLOCK {
                    let gspan = rows4(j) * groups..(rows4(j) + 1) * groups;
                    lanes.widen_f16(&scales[gspan.clone()], &mut s[j * groups..]);
                    lanes.widen_f16(&mins[gspan], &mut m[j * groups..]);
                }
                let (s, m) = (&*s, &*m);
                let rows = from_fn(|j| I4Row {
                    packed: &packed[span(j).start / 2..span(j).end / 2],
                    scales: &s[j * groups..(j + 1) * groups],
                    mins: &m[j * groups..(j + 1) * groups],
                    group_size: *group_size,
                    chunk_shift,
                });
                dots4(lanes, rows, x, n, t0, t1, out);
            }
            None => decoded4(lanes, w, r0, x, n, t0, t1, out, buf),
        },
        WeightData::Int4Blocked(_) => decoded4(lanes, w, r0, x, n, t0, t1, out, buf),
    }
}

/// [`row_block`] for group sizes the fused rows do not take: the four rows decoded into `buf`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn decoded4(
    lanes: impl Lanes,
    w: &Weight,
    r0: usize,
    x: &[f32],
    n: usize,
    t0: usize,
    t1: usize,
    out: &mut [f32],
    buf: &mut [f32],
) {
    let cols = w.cols;
    for (j, row) in buf.chunks_exact_mut(cols).take(ROW_BLOCK).enumerate() {
        // Grouped forms decode to their dequantized values (no deferred scale).
        decode_row_unscaled(w, r0 + j, row);
    }
    let buf = &*buf;
    dots4(
        lanes,
        from_fn(|j| &buf[j * cols..(j + 1) * cols]),
        x,
        n,
        t0,
        t1,
        out,
    );
}

/// `out[j * n + t] = rows[j] . x[t]` for activation rows `t0..t1`.
#[inline(always)]
fn dots4<R: Row>(
    lanes: impl Lanes,
    rows: [R; ROW_BLOCK],
    x: &[f32],
    n: usize,
    t0: usize,
    t1: usize,
    out: &mut [f32],
) {
    let cols = rows[0].len();
    for t in t0..t1 {
        let s = lanes.dot_rows4(rows, &x[t * cols..(t + 1) * cols]);
        for (j, v) in s.into_iter().enumerate() {
            out[j * n + t] = v;
        }
    }
}

/// `o[t] = row . x[t]` for activation rows `t0..t1`, four at a time while possible.
#[inline(always)]
fn dots<R: Row>(lanes: impl Lanes, row: R, x: &[f32], t0: usize, t1: usize, o: &mut [f32]) {
    let cols = row.len();
    let xr = |t: usize| &x[t * cols..(t + 1) * cols];
    let mut t = t0;
    while t + 4 <= t1 {
        let s4 = lanes.dot4_row(row, [xr(t), xr(t + 1), xr(t + 2), xr(t + 3)]);
        o[t..t + 4].copy_from_slice(&s4);
        t += 4;
    }
    for (ov, t) in o[t..t1].iter_mut().zip(t..t1) {
        *ov = lanes.dot_row(row, xr(t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::fixed4::Int4Rows;
    use crate::cpu::fixed_task::int8_src;
    use crate::cpu::isa::available;
    use crate::cpu::testutil::{random_weight, reference_element, Form, Rng, FORMS};
    use crate::cpu::{fixed, fixed4};

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    #[allow(clippy::needless_range_loop)] // indices mirror the format's definition
    fn gemv_matches_f64_reference_for_every_form() {
        let mut rng = Rng(1);
        for form in FORMS {
            let mut ran = 0;
            for (rows, cols) in [(37, 96), (5, 100), (16, 576), (3, 2), (9, 384)] {
                if !form.fits(cols) {
                    continue;
                }
                ran += 1;
                let w = random_weight(&mut rng, rows, cols, form);
                let x = rng.vec(cols);
                let mut y = vec![0f32; rows];
                gemv(&w, &x, &mut y).unwrap();
                for r in 0..rows {
                    let (mut want, mut mag) = (0f64, 0f64);
                    for c in 0..cols {
                        let t = reference_element(&w, r, c) * x[c] as f64;
                        want += t;
                        mag += t.abs();
                    }
                    let err = (y[r] as f64 - want).abs();
                    // Int8 and int4 products round each x to the fixed point, by up to 2^-22 of
                    // the row's largest |x| (decisions 0025, 0026): an error of order
                    // 2^-22 * mag.
                    let floor = mag * if form.fixed_point() { 1e-6 } else { 1e-7 };
                    assert!(
                        err <= (1e-5 * want.abs()).max(floor).max(1e-30),
                        "{form:?} {rows}x{cols} row {r}: {} vs {want}",
                        y[r]
                    );
                }
            }
            assert!(ran > 0, "{form:?} fits none of the shapes");
        }
    }

    #[test]
    fn batched_equals_gemv_bit_for_bit_on_every_isa_and_thread_count() {
        let mut rng = Rng(2);
        for form in FORMS {
            // 384 columns fit every group size; 160 is kept for the forms that fit it.
            let shapes = [(45, 160, 39), (13, 384, 37)];
            let shapes = shapes.into_iter().filter(|&(_, cols, _)| form.fits(cols));
            for (rows, cols, n) in shapes {
                batched_equals_gemv(&mut rng, form, rows, cols, n);
            }
        }
    }

    /// One shape of `batched_equals_gemv_bit_for_bit_on_every_isa_and_thread_count`.
    fn batched_equals_gemv(
        rng: &mut Rng,
        form: crate::cpu::testutil::Form,
        rows: usize,
        cols: usize,
        n: usize,
    ) {
        let w = random_weight(rng, rows, cols, form);
        let x = rng.vec(n * cols);
        let mut single = vec![0f32; n * rows];
        for t in 0..n {
            gemv(
                &w,
                &x[t * cols..(t + 1) * cols],
                &mut single[t * rows..(t + 1) * rows],
            )
            .unwrap();
        }
        for isa in available() {
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut batched = vec![0f32; n * rows];
                pool.install(|| matmul_with(isa, &x, n, &mut [(&w, &mut batched[..])]))
                    .unwrap();
                assert_eq!(
                    bits(&batched),
                    bits(&single),
                    "{form:?} {isa:?} threads {threads}"
                );
                let mut one = vec![0f32; rows];
                pool.install(|| matmul_with(isa, &x[..cols], 1, &mut [(&w, &mut one[..])]))
                    .unwrap();
                assert_eq!(
                    bits(&one),
                    bits(&single[..rows]),
                    "{form:?} {isa:?} threads {threads}"
                );
            }
        }
    }

    /// A `rows x cols` weight of `form` gives, on every ISA and for 1 and 6 tokens, the bits of
    /// the f32 matrix its rows decode to: the dot products see the same values.
    fn assert_bits_of_f32_copy(
        rng: &mut Rng,
        form: crate::cpu::testutil::Form,
        rows: usize,
        cols: usize,
    ) {
        let w = random_weight(rng, rows, cols, form);
        let wide = Weight {
            rows,
            cols,
            data: WeightData::F32(w.to_f32_vec().unwrap()),
        };
        let x = rng.vec(6 * cols);
        for isa in available() {
            for n in [1, 6] {
                let (mut a, mut b) = (vec![0f32; n * rows], vec![0f32; n * rows]);
                matmul_with(isa, &x[..n * cols], n, &mut [(&w, &mut a[..])]).unwrap();
                matmul_with(isa, &x[..n * cols], n, &mut [(&wide, &mut b[..])]).unwrap();
                assert_eq!(bits(&a), bits(&b), "{form:?} {isa:?} n={n}");
            }
        }
    }

    #[test]
    fn bf16_rows_give_the_bits_of_their_f32_widening() {
        assert_bits_of_f32_copy(&mut Rng(4), crate::cpu::testutil::Form::Bf16, 21, 83);
    }

    #[test]
    fn fixed_point_products_follow_their_definition_on_every_isa() {
        // Every int8 form and the int4 group sizes taken in fixed point, on every ISA, for one
        // and six activation rows: the bits of the fixed-point definitions
        // (`fixed::dots_portable`, `fixed4::dot_portable`), int4 in both layouts; an activation row
        // with a NaN takes the float path (the bits of the dequantized f32 matrix) without
        // touching the others.
        let mut rng = Rng(7);
        let forms = FORMS.into_iter().filter(|f| f.fixed_point());
        for form in forms.chain([Form::Int8Group(16)]) {
            let (rows, cols) = (19, 384);
            let w = random_weight(&mut rng, rows, cols, form);
            let wide = Weight {
                rows,
                cols,
                data: WeightData::F32(w.to_f32_vec().unwrap()),
            };
            let mut x = rng.vec(6 * cols);
            x[3 * cols + 5] = f32::NAN;
            let mut want = vec![0f32; 6 * rows];
            for t in 0..6 {
                let xt = &x[t * cols..(t + 1) * cols];
                let yt = &mut want[t * rows..(t + 1) * rows];
                match FixedRow::new(xt) {
                    Some(fx) => {
                        for (r, y) in yt.iter_mut().enumerate() {
                            *y = match form {
                                Form::Int4(_) => {
                                    let rows = Int4Rows::of(&w).unwrap();
                                    fixed4::dot_portable(&rows, r, &fx)
                                }
                                _ => fixed::dots_portable([int8_src(&w, r)], &fx)[0],
                            };
                        }
                    }
                    None => gemv(&wide, xt, yt).unwrap(),
                }
            }
            assert!(want[3 * rows..4 * rows].iter().all(|v| v.is_nan()));
            let blocked = crate::cpu::prepare(w.clone());
            assert_eq!(
                matches!(blocked.data, WeightData::Int4Blocked(_)),
                matches!(form, Form::Int4(_))
            );
            for w in [&w, &blocked] {
                for isa in available() {
                    for n in [1, 6] {
                        let mut y = vec![0f32; n * rows];
                        matmul_with(isa, &x[..n * cols], n, &mut [(w, &mut y[..])]).unwrap();
                        assert_eq!(bits(&y), bits(&want[..n * rows]), "{form:?} {isa:?} n={n}");
                    }
                }
            }
        }
    }

    #[test]
    fn dequantized_rows_follow_the_format() {
        let mut rng = Rng(5);
        for form in FORMS {
            let mut ran = 0;
            for cols in [96, 384].into_iter().filter(|&c| form.fits(c)) {
                ran += 1;
                let w = random_weight(&mut rng, 3, cols, form);
                let mut row = vec![0f32; cols];
                crate::cpu::embedding_row(&w, 2, &mut row).unwrap();
                for (c, &v) in row.iter().enumerate() {
                    assert_eq!(v as f64, reference_element(&w, 2, c), "{form:?} col {c}");
                }
                assert!(crate::cpu::embedding_row(&w, 3, &mut row).is_err());
            }
            assert!(ran > 0, "{form:?} fits none of the shapes");
        }
    }

    #[test]
    fn matmul_many_equals_separate_products() {
        let mut rng = Rng(6);
        let w1 = random_weight(&mut rng, 40, 64, crate::cpu::testutil::Form::Bf16);
        let w2 = random_weight(&mut rng, 7, 64, crate::cpu::testutil::Form::Int4(32));
        for n in [1, 5] {
            let x = rng.vec(n * 64);
            let (mut a1, mut a2) = (vec![0f32; n * 40], vec![0f32; n * 7]);
            matmul(&w1, &x, n, &mut a1).unwrap();
            matmul(&w2, &x, n, &mut a2).unwrap();
            let (mut b1, mut b2) = (vec![0f32; n * 40], vec![0f32; n * 7]);
            matmul_many(&x, n, &mut [(&w1, &mut b1[..]), (&w2, &mut b2[..])]).unwrap();
            assert_eq!(bits(&a1), bits(&b1));
            assert_eq!(bits(&a2), bits(&b2));
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let mut rng = Rng(3);
        let w = random_weight(&mut rng, 4, 8, crate::cpu::testutil::Form::Bf16);
        assert!(gemv(&w, &[0.0; 7], &mut [0.0; 4]).is_err());
        assert!(gemv(&w, &[0.0; 8], &mut [0.0; 5]).is_err());
        let mut bad = w.clone();
        bad.rows = 5;
        assert!(matches!(
            gemv(&bad, &[0.0; 8], &mut [0.0; 5]),
            Err(KernelError::WeightLength { .. })
        ));
        let odd = Weight {
            rows: 1,
            cols: 3,
            data: WeightData::Int4 {
                packed: vec![0; 2],
                scales: vec![half::f16::ONE],
                mins: vec![half::f16::ZERO],
                group_size: 4,
            },
        };
        assert_eq!(odd.validate(), Err(KernelError::Int4OddColumns(3)));
    }

    #[test]
    fn int8_group_layouts_are_validated() {
        let w = |cols: usize, group_size: usize, q_len: usize, scales_len: usize| Weight {
            rows: 2,
            cols,
            data: WeightData::Int8Group {
                q: vec![1; q_len],
                scales: vec![0.5; scales_len],
                group_size,
            },
        };
        assert_eq!(w(96, 32, 192, 6).validate(), Ok(()));
        assert_eq!(w(96, 48, 192, 4).validate(), Ok(()));
        for (cols, gs) in [(96, 0), (96, 8), (96, 24), (96, 64), (100, 32)] {
            assert_eq!(
                w(cols, gs, 2 * cols, 2).validate(),
                Err(KernelError::Int8GroupSize {
                    group_size: gs,
                    cols
                }),
                "cols {cols} group {gs}"
            );
        }
        assert!(matches!(
            w(96, 32, 191, 6).validate(),
            Err(KernelError::WeightLength { .. })
        ));
        assert!(matches!(
            w(96, 32, 192, 3).validate(),
            Err(KernelError::WeightLength { .. })
        ));
        assert!(gemv(&w(96, 32, 192, 5), &[0.0; 96], &mut [0.0; 2]).is_err());
        let mut row = [0f32; 96];
        w(96, 32, 192, 6).dequantize_row(1, &mut row).unwrap();
        assert!(row.iter().all(|&v| v == 0.5));
    }
}
