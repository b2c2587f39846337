//! Weight rows as sources of 16-value chunks, decoded exactly in registers.
//!
//! The dot products of [`dot`](super::dot) read a weight row through [`Row`]: chunk `k` is
//! elements `16k..16k + 16` as f32, and the tail (`len % 16` elements) is read one by one. Every
//! storage form decodes to the *same* f32 values in the portable and the AVX2 forms (widening
//! bf16/f16 and converting small integers are exact; int4's `(nibble * scale) + min` is two
//! f32 roundings either way), so the dot products see identical inputs on every ISA.
//!
//! Per-row int8 rows yield the unscaled `q as f32`; the caller multiplies the finished dot by the
//! row's scale. Group-wise int8 rows cannot defer their scales (a row has several), so they yield
//! `q as f32 * scale` (the exact conversion, then one f32 multiplication, never fused) from the
//! row's f32 group scales. Int4 rows need their group scales and mins as f32 (decoded once per
//! row by the caller). Both grouped forms need a group size whose 16-value chunk count is a power
//! of two (so a chunk's group is a shift); other group sizes take the decode-to-buffer path in
//! the matrix kernels.

use half::{bf16, f16};

use super::dot::LANES;

/// A weight row readable in 16-value chunks; see the module documentation.
pub(crate) trait Row: Copy {
    /// Number of values.
    fn len(self) -> usize;
    /// Values `16k..16k + 16` (requires `16k + 16 <= len`).
    fn chunk(self, k: usize) -> [f32; LANES];
    /// Value `i`.
    fn get(self, i: usize) -> f32;
    /// Asks for the bytes [`PREFETCH_BYTES`] past chunk `k`'s to be brought into cache. A hint
    /// only (it changes no value): four rows read side by side are four streams of small reads,
    /// which the hardware prefetchers do not run far enough ahead of.
    #[inline(always)]
    fn prefetch(self, _k: usize) {}
    /// [`Row::chunk`] as two AVX registers (values `16k..16k+8` and `16k+8..16k+16`).
    ///
    /// # Safety
    /// The CPU must support AVX2 and F16C, and `16k + 16 <= len`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn chunk_avx2(self, k: usize) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256);
    /// log2 of the chunks that share one AVX-512 set-up ([`Row::group_avx512`]): a group of a
    /// grouped form; a row without groups is one group.
    #[inline(always)]
    fn group_shift(self) -> u32 {
        usize::BITS - 1
    }
    /// What decoding group `g`'s chunks needs, made once per group: a broadcast scale, int4's
    /// table of values. Unused by forms without groups.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW, AVX2 and F16C, and `g` must be a group of the row.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn group_avx512(self, _g: usize) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_setzero_ps()
    }
    /// [`Row::chunk`] as one AVX-512 register, given its group's [`Row::group_avx512`].
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW, AVX2 and F16C, and `16k + 16 <= len`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn chunk_avx512(
        self,
        k: usize,
        group: std::arch::x86_64::__m512,
    ) -> std::arch::x86_64::__m512;
    /// Calls `f(k, chunk k)` for `k` in `0..chunks`, in order, each group set up once.
    ///
    /// # Safety
    /// As [`Row::chunk_avx512`], for every `k < chunks`.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunks_avx512(
        self,
        chunks: usize,
        mut f: impl FnMut(usize, std::arch::x86_64::__m512),
    ) {
        let shift = self.group_shift();
        for g in 0..chunks.div_ceil(1 << shift) {
            let group = self.group_avx512(g);
            for k in g << shift..((g + 1) << shift).min(chunks) {
                f(k, self.chunk_avx512(k, group));
            }
        }
    }
    /// [`Row::chunks_avx512`] for four rows of one matrix side by side, `f(k, [chunk k of each
    /// row])`, each row's bytes prefetched ([`Row::prefetch`]).
    ///
    /// # Safety
    /// As [`Row::chunk_avx512`], for every row and every `k < chunks`.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunks4_avx512(
        rows: [Self; 4],
        chunks: usize,
        mut f: impl FnMut(usize, [std::arch::x86_64::__m512; 4]),
    ) {
        use std::arch::x86_64::*;
        let shift = rows[0].group_shift();
        // Plain loops, not `array::map`: its closure would not inherit the caller's target
        // features, and the intrinsics would be called rather than inlined.
        for g in 0..chunks.div_ceil(1 << shift) {
            let mut group = [_mm512_setzero_ps(); 4];
            for j in 0..4 {
                group[j] = rows[j].group_avx512(g);
            }
            for k in g << shift..((g + 1) << shift).min(chunks) {
                let mut w = [_mm512_setzero_ps(); 4];
                for j in 0..4 {
                    rows[j].prefetch(k);
                    w[j] = rows[j].chunk_avx512(k, group[j]);
                }
                f(k, w);
            }
        }
    }
}

/// How far past the chunk being read [`Row::prefetch`] asks for a row's bytes.
pub(crate) const PREFETCH_BYTES: usize = 256;

/// Prefetches the byte [`PREFETCH_BYTES`] past element `at` of `v`, if it is inside `v`.
#[inline(always)]
fn prefetch_bytes<T>(v: &[T], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(e) = v.get(at + PREFETCH_BYTES / std::mem::size_of::<T>()) {
        use std::arch::x86_64::*;
        // SAFETY: a prefetch of an address inside `v`; prefetches never fault.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(e as *const T as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (v, at);
}

impl Row for &[f32] {
    #[inline(always)]
    fn len(self) -> usize {
        <[f32]>::len(self)
    }
    #[inline(always)]
    fn chunk(self, k: usize) -> [f32; LANES] {
        let mut out = [0f32; LANES];
        out.copy_from_slice(&self[k * LANES..(k + 1) * LANES]);
        out
    }
    #[inline(always)]
    fn get(self, i: usize) -> f32 {
        self[i]
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunk_avx2(self, k: usize) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
        use std::arch::x86_64::*;
        let p = self[k * LANES..(k + 1) * LANES].as_ptr();
        (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunk_avx512(
        self,
        k: usize,
        _: std::arch::x86_64::__m512,
    ) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(self[k * LANES..(k + 1) * LANES].as_ptr())
    }
}

/// A bf16 row: widened exactly (a bf16 is the high half of an f32).
#[derive(Clone, Copy)]
pub(crate) struct Bf16Row<'a>(pub &'a [bf16]);

#[inline(always)]
fn widen(b: bf16) -> f32 {
    f32::from_bits((b.to_bits() as u32) << 16)
}

impl Row for Bf16Row<'_> {
    #[inline(always)]
    fn len(self) -> usize {
        self.0.len()
    }
    #[inline(always)]
    fn prefetch(self, k: usize) {
        prefetch_bytes(self.0, k * LANES);
    }
    #[inline(always)]
    fn chunk(self, k: usize) -> [f32; LANES] {
        let c = &self.0[k * LANES..(k + 1) * LANES];
        std::array::from_fn(|l| widen(c[l]))
    }
    #[inline(always)]
    fn get(self, i: usize) -> f32 {
        widen(self.0[i])
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunk_avx2(self, k: usize) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
        use std::arch::x86_64::*;
        let p = self.0[k * LANES..(k + 1) * LANES].as_ptr() as *const __m128i;
        let w = |h: __m128i| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)));
        (w(_mm_loadu_si128(p)), w(_mm_loadu_si128(p.add(1))))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunk_avx512(
        self,
        k: usize,
        _: std::arch::x86_64::__m512,
    ) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let p = self.0[k * LANES..(k + 1) * LANES].as_ptr() as *const __m256i;
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
            _mm256_loadu_si256(p),
        )))
    }
}

/// An f16 row: widened exactly (F16C `vcvtph2ps` on AVX2 machines).
#[derive(Clone, Copy)]
pub(crate) struct F16Row<'a>(pub &'a [f16]);

impl Row for F16Row<'_> {
    #[inline(always)]
    fn len(self) -> usize {
        self.0.len()
    }
    #[inline(always)]
    fn chunk(self, k: usize) -> [f32; LANES] {
        let c = &self.0[k * LANES..(k + 1) * LANES];
        std::array::from_fn(|l| c[l].to_f32())
    }
    #[inline(always)]
    fn get(self, i: usize) -> f32 {
        self.0[i].to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunk_avx2(self, k: usize) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
        use std::arch::x86_64::*;
        let p = self.0[k * LANES..(k + 1) * LANES].as_ptr() as *const __m128i;
        (
            _mm256_cvtph_ps(_mm_loadu_si128(p)),
            _mm256_cvtph_ps(_mm_loadu_si128(p.add(1))),
        )
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunk_avx512(
        self,
        k: usize,
        _: std::arch::x86_64::__m512,
    ) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let p = self.0[k * LANES..(k + 1) * LANES].as_ptr() as *const __m256i;
        _mm512_cvtph_ps(_mm256_loadu_si256(p))
    }
}

/// An int8 row, unscaled: `q as f32` (exact).
#[derive(Clone, Copy)]
pub(crate) struct I8Row<'a>(pub &'a [i8]);

impl Row for I8Row<'_> {
    #[inline(always)]
    fn len(self) -> usize {
        self.0.len()
    }
    #[inline(always)]
    fn prefetch(self, k: usize) {
        prefetch_bytes(self.0, k * LANES);
    }
    #[inline(always)]
    fn chunk(self, k: usize) -> [f32; LANES] {
        let c = &self.0[k * LANES..(k + 1) * LANES];
        std::array::from_fn(|l| c[l] as f32)
    }
    #[inline(always)]
    fn get(self, i: usize) -> f32 {
        self.0[i] as f32
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunk_avx2(self, k: usize) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
        use std::arch::x86_64::*;
        let p = self.0[k * LANES..(k + 1) * LANES].as_ptr() as *const __m128i;
        let v = _mm_loadu_si128(p);
        (
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(v, v))),
        )
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunk_avx512(
        self,
        k: usize,
        _: std::arch::x86_64::__m512,
    ) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let p = self.0[k * LANES..(k + 1) * LANES].as_ptr() as *const __m128i;
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p)))
    }
}

/// A group-wise int8 row: `q` holds the row's codes, `scales` its group scales, and a group
/// spans `1 << chunk_shift` chunks of 16 values. Values are `q as f32 * scale`.
#[derive(Clone, Copy)]
pub(crate) struct I8GroupRow<'a> {
    pub q: &'a [i8],
    pub scales: &'a [f32],
    pub chunk_shift: u32,
}

impl Row for I8GroupRow<'_> {
    #[inline(always)]
    fn len(self) -> usize {
        self.q.len()
    }
    #[inline(always)]
    fn chunk(self, k: usize) -> [f32; LANES] {
        let s = self.scales[k >> self.chunk_shift];
        I8Row(self.q).chunk(k).map(|v| v * s)
    }
    #[inline(always)]
    fn get(self, i: usize) -> f32 {
        self.q[i] as f32 * self.scales[(i / LANES) >> self.chunk_shift]
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunk_avx2(self, k: usize) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
        use std::arch::x86_64::*;
        let s = _mm256_set1_ps(self.scales[k >> self.chunk_shift]);
        let (lo, hi) = I8Row(self.q).chunk_avx2(k);
        // A separate multiply, like the portable `v * s`: same rounding, same bits.
        (_mm256_mul_ps(lo, s), _mm256_mul_ps(hi, s))
    }
    #[inline(always)]
    fn group_shift(self) -> u32 {
        self.chunk_shift
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn group_avx512(self, g: usize) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_set1_ps(self.scales[g])
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunk_avx512(
        self,
        k: usize,
        scale: std::arch::x86_64::__m512,
    ) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // A separate multiply, like the portable `v * s`: same rounding, same bits.
        _mm512_mul_ps(I8Row(self.q).chunk_avx512(k, scale), scale)
    }
    #[inline(always)]
    fn prefetch(self, k: usize) {
        prefetch_bytes(self.q, k * LANES);
    }
}

/// An int4 row: `packed` holds `len / 2` bytes (low nibble = even column), `scales` and `mins`
/// one f32 per group, and a group spans `1 << chunk_shift` chunks of 16 values.
#[derive(Clone, Copy)]
pub(crate) struct I4Row<'a> {
    pub packed: &'a [u8],
    pub scales: &'a [f32],
    pub mins: &'a [f32],
    pub group_size: usize,
    pub chunk_shift: u32,
}

/// `log2` of the chunks per group, if whole chunks make up a group and their count is a power
/// of two: the `chunk_shift` of [`I8GroupRow`] and [`I4Row`], which find a chunk's group with a
/// shift, not a division. Other group sizes take the decode-to-buffer path.
pub(crate) fn group_chunk_shift(group_size: usize) -> Option<u32> {
    let chunks = group_size / LANES;
    (group_size.is_multiple_of(LANES) && chunks.is_power_of_two()).then(|| chunks.trailing_zeros())
}

impl Row for I4Row<'_> {
    #[inline(always)]
    fn len(self) -> usize {
        self.packed.len() * 2
    }
    #[inline(always)]
    fn chunk(self, k: usize) -> [f32; LANES] {
        let g = k >> self.chunk_shift;
        let (s, m) = (self.scales[g], self.mins[g]);
        let b = &self.packed[k * LANES / 2..(k + 1) * LANES / 2];
        std::array::from_fn(|l| {
            let byte = b[l / 2];
            let nib = if l % 2 == 0 { byte & 0x0f } else { byte >> 4 };
            nib as f32 * s + m
        })
    }
    #[inline(always)]
    fn get(self, i: usize) -> f32 {
        let g = i / self.group_size;
        let nib = crate::weights::int4_nibble(self.packed[i / 2], i);
        nib as f32 * self.scales[g] + self.mins[g]
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunk_avx2(self, k: usize) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
        use std::arch::x86_64::*;
        let g = k >> self.chunk_shift;
        let (s, m) = (_mm256_set1_ps(self.scales[g]), _mm256_set1_ps(self.mins[g]));
        i4_decode_avx2(&self.packed[k * LANES / 2..(k + 1) * LANES / 2], s, m)
    }
    #[inline(always)]
    fn group_shift(self) -> u32 {
        self.chunk_shift
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn group_avx512(self, g: usize) -> std::arch::x86_64::__m512 {
        i4_table_avx512(self.scales[g], self.mins[g])
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunk_avx512(
        self,
        k: usize,
        table: std::arch::x86_64::__m512,
    ) -> std::arch::x86_64::__m512 {
        i4_lookup_avx512(&self.packed[k * LANES / 2..(k + 1) * LANES / 2], table)
    }
    #[inline(always)]
    fn prefetch(self, k: usize) {
        prefetch_bytes(self.packed, k * LANES / 2);
    }
}

/// The 16 values a group's nibbles decode to, `(nibble * s) + m` for nibble 0..16: the
/// format's two roundings, done once per group instead of once per value.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn i4_table_avx512(s: f32, m: f32) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let nibbles = _mm512_setr_ps(
        0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
    );
    _mm512_add_ps(_mm512_mul_ps(nibbles, _mm512_set1_ps(s)), _mm512_set1_ps(m))
}

/// Decodes 8 int4 bytes (16 values, low nibble first) by looking each nibble up in `table`.
///
/// # Safety
/// `bytes` holds at least 8 bytes; the CPU must support AVX-512 F and AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn i4_lookup_avx512(
    bytes: &[u8],
    table: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // Each byte to two 32-bit lanes (even lane: the low nibble in the low bits; odd lane: the
    // byte shifted right by 4); the permute reads only each lane's low 4 bits.
    let v = _mm_loadl_epi64(bytes[..8].as_ptr() as *const __m128i);
    let pairs = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(v, v));
    let shifts = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
    _mm512_permutexvar_ps(_mm512_srlv_epi32(pairs, shifts), table)
}

/// Decodes 8 int4 bytes (16 values, low nibble first) to `nibble * s + m` in two registers.
///
/// # Safety
/// `bytes` holds at least 8 bytes; the CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn i4_decode_avx2(
    bytes: &[u8],
    s: std::arch::x86_64::__m256,
    m: std::arch::x86_64::__m256,
) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    // Nibbles split at byte level, then interleaved into column order (low nibble first).
    let v = _mm_loadl_epi64(bytes[..8].as_ptr() as *const __m128i);
    let mask = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(v, mask);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), mask);
    let d = _mm_unpacklo_epi8(lo, hi);
    let w = |nibbles: __m128i| {
        let f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(nibbles));
        _mm256_add_ps(_mm256_mul_ps(f, s), m)
    };
    (w(d), w(_mm_unpackhi_epi64(d, d)))
}
