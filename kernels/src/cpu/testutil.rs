//! Seeded random weights for the kernels' unit tests (splitmix64; no external RNG needed).

use half::{bf16, f16};

use crate::weights::{Weight, WeightData};

pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

/// The storage forms the tests cover.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Form {
    F32,
    Bf16,
    F16,
    Int8,
    Int8Group(usize),
    Int4(usize),
}

impl Form {
    /// Whether products with this form take the fixed point of `fixed` / `fixed4` (decisions
    /// 0025, 0026) on activation rows that have one.
    pub fn fixed_point(self) -> bool {
        match self {
            Form::Int8 | Form::Int8Group(_) => true,
            Form::Int4(gs) => crate::cpu::fixed4::takes_fixed(gs),
            _ => false,
        }
    }

    /// Whether a weight with `cols` columns can take this form: group-wise int8 groups must
    /// divide the row (other forms take any width the tests use). Tests skip shapes a form does
    /// not fit and check that each form still ran on some shape.
    pub fn fits(self, cols: usize) -> bool {
        match self {
            Form::Int8Group(gs) => cols.is_multiple_of(gs),
            _ => true,
        }
    }
}

/// Int4 group sizes that are multiples of 8 (32, 64, 48, 8) take the fixed-point products of
/// `fixed4` (and, for rows without a fixed form, the fused path for 32 and 64, the
/// decode-to-buffer path for 48 and 8); 10 keeps the float path. Int8 group sizes 32, 64 and
/// 128 are the container's and take the fused path; 48 (valid, but 3 chunks) takes the
/// decode-to-buffer path.
pub(crate) const FORMS: [Form; 13] = [
    Form::F32,
    Form::Bf16,
    Form::F16,
    Form::Int8,
    Form::Int8Group(32),
    Form::Int8Group(64),
    Form::Int8Group(128),
    Form::Int8Group(48),
    Form::Int4(32),
    Form::Int4(64),
    Form::Int4(48),
    Form::Int4(8),
    Form::Int4(10),
];

pub(crate) fn random_weight(rng: &mut Rng, rows: usize, cols: usize, form: Form) -> Weight {
    let n = rows * cols;
    let data = match form {
        Form::F32 => WeightData::F32(rng.vec(n)),
        Form::Bf16 => WeightData::Bf16(rng.vec(n).into_iter().map(bf16::from_f32).collect()),
        Form::F16 => WeightData::F16(rng.vec(n).into_iter().map(f16::from_f32).collect()),
        Form::Int8 => WeightData::Int8Row {
            q: (0..n)
                .map(|_| ((rng.next_u64() % 255) as i16 - 127) as i8)
                .collect(),
            scales: (0..rows).map(|_| 0.01 + rng.f32().abs() * 0.02).collect(),
        },
        Form::Int8Group(gs) => {
            assert!(form.fits(cols), "{form:?} does not fit {cols} columns");
            WeightData::Int8Group {
                q: (0..n)
                    .map(|_| ((rng.next_u64() % 255) as i16 - 127) as i8)
                    .collect(),
                scales: (0..rows * (cols / gs))
                    .map(|_| 0.01 + rng.f32().abs() * 0.02)
                    .collect(),
                group_size: gs,
            }
        }
        Form::Int4(gs) => {
            let groups = rows * cols.div_ceil(gs);
            WeightData::Int4 {
                packed: (0..n / 2).map(|_| rng.next_u64() as u8).collect(),
                scales: (0..groups)
                    .map(|_| f16::from_f32(0.01 + rng.f32().abs() * 0.02))
                    .collect(),
                mins: (0..groups)
                    .map(|_| f16::from_f32(-0.1 + rng.f32() * 0.02))
                    .collect(),
                group_size: gs,
            }
        }
    };
    Weight { rows, cols, data }
}

/// Dequantizes element (r, c) straight from the format's definition, as f64.
pub(crate) fn reference_element(w: &Weight, r: usize, c: usize) -> f64 {
    let i = r * w.cols + c;
    match &w.data {
        WeightData::F32(v) => v[i] as f64,
        WeightData::Bf16(v) => v[i].to_f64(),
        WeightData::F16(v) => v[i].to_f64(),
        WeightData::Int8Row { q, scales } => (q[i] as f32 * scales[r]) as f64,
        WeightData::Int8Group {
            q,
            scales,
            group_size,
        } => (q[i] as f32 * scales[r * (w.cols / group_size) + c / group_size]) as f64,
        WeightData::Int4 {
            packed,
            scales,
            mins,
            group_size,
        } => {
            let groups = w.cols.div_ceil(*group_size);
            let g = r * groups + c / group_size;
            let byte = packed[r * w.cols / 2 + c / 2];
            let nib = if c.is_multiple_of(2) {
                byte & 0x0f
            } else {
                byte >> 4
            };
            ((nib as f32 * scales[g].to_f32()) + mins[g].to_f32()) as f64
        }
        WeightData::Int4Blocked(b) => {
            let (s, m) = b.params(r, c / b.group_size());
            ((b.nibble(r, c) as f32 * s.to_f32()) + m.to_f32()) as f64
        }
    }
}

/// The fixed point of decisions 0025 and 0026 written out independently of `fixed`: the shift
/// `S = 20 - floor(log2 max|x|)` (0 for a zero row) and `X = round_ties_even(x * 2^S)`, or
/// `None` for a row with a non-finite value.
pub(crate) fn reference_fixed_point(x: &[f32]) -> Option<(i32, Vec<i64>)> {
    if x.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let m = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let s = if m == 0.0 {
        0
    } else {
        20 - (m as f64).log2().floor() as i32
    };
    let xi: Vec<i64> = x
        .iter()
        .map(|v| (v * 2f32.powi(s)).round_ties_even() as i64)
        .collect();
    assert!(xi.iter().all(|v| v.abs() <= 1 << 21));
    Some((s, xi))
}
