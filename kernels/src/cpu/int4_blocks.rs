//! int4 weights in the layout the CPU's fixed-point products read (decision record 0028): the
//! rows taken sixteen at a time, so that one 64-byte load holds eight columns of each of them
//! and one vector lane is one row.
//!
//! The values are the container's, moved and never changed: a block of [`BLOCK_ROWS`] rows
//! holds, group after group, the group's pieces (one 64-byte line per eight columns: row `r`'s
//! four packed bytes at `4r`, low nibble the even column) and then one line of parameters (the
//! sixteen rows' f16 scales, then their f16 minimums). Rows past the matrix and columns past a
//! row are zero nibbles with zero parameters; they are never read back as values.

use half::f16;

use super::decode::decode_int4_group;
use crate::weights::int4_nibble;

/// Rows interleaved in one block: the lanes of a 512-bit vector of i32.
pub const BLOCK_ROWS: usize = 16;

/// Columns per piece: one row's four packed bytes.
pub(crate) const PIECE_COLS: usize = 8;

/// One cache line of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub(crate) struct Line(pub(crate) [u8; 64]);

/// An int4 weight (`rows x cols`, groups of `group_size` columns, a multiple of
/// [`PIECE_COLS`]) in blocks of [`BLOCK_ROWS`] rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Int4Blocks {
    lines: Vec<Line>,
    rows: usize,
    cols: usize,
    group_size: usize,
}

impl Int4Blocks {
    /// The blocks of a row-major int4 weight as [`WeightData::Int4`](crate::WeightData::Int4)
    /// holds it; `None` where the group size is not a positive multiple of [`PIECE_COLS`] or
    /// the lengths are not those of `rows x cols` (a weight that failed validation).
    pub fn from_rows(
        rows: usize,
        cols: usize,
        packed: &[u8],
        scales: &[f16],
        mins: &[f16],
        group_size: usize,
    ) -> Option<Int4Blocks> {
        if group_size == 0 || !group_size.is_multiple_of(PIECE_COLS) || !cols.is_multiple_of(2) {
            return None;
        }
        let groups = cols.div_ceil(group_size);
        let ok = rows.checked_mul(cols)? / 2 == packed.len()
            && rows.checked_mul(groups)? == scales.len()
            && mins.len() == scales.len();
        if !ok {
            return None;
        }
        let mut b = Int4Blocks {
            lines: Vec::new(),
            rows,
            cols,
            group_size,
        };
        let total = rows.div_ceil(BLOCK_ROWS).checked_mul(b.stride())?;
        b.lines = vec![Line([0; 64]); total];
        let half = cols / 2;
        for r in 0..rows {
            let (block, lane) = b.block_lane(r);
            for g in 0..groups {
                let at = block + b.group_line(g);
                let c0 = g * group_size;
                let bytes = &packed[r * half + c0 / 2..r * half + (c0 + b.group_cols(g)) / 2];
                for (p, chunk) in bytes.chunks(PIECE_COLS / 2).enumerate() {
                    b.lines[at + p].0[4 * lane..4 * lane + chunk.len()].copy_from_slice(chunk);
                }
                let pieces = b.pieces(g);
                let params = &mut b.lines[at + pieces].0;
                let k = r * groups + g;
                params[2 * lane..2 * lane + 2].copy_from_slice(&scales[k].to_bits().to_le_bytes());
                params[32 + 2 * lane..32 + 2 * lane + 2]
                    .copy_from_slice(&mins[k].to_bits().to_le_bytes());
            }
        }
        Some(b)
    }

    /// The row-major form back: packed bytes, scales, minimums (what
    /// [`WeightData::Int4`](crate::WeightData::Int4) holds).
    pub fn to_rows(&self) -> (Vec<u8>, Vec<f16>, Vec<f16>) {
        let groups = self.groups();
        let mut packed = vec![0u8; self.rows * self.cols / 2];
        let (mut scales, mut mins) = (Vec::new(), Vec::new());
        if self.cols == 0 {
            return (packed, scales, mins);
        }
        for (r, row) in packed.chunks_exact_mut(self.cols / 2).enumerate() {
            let bytes = (0..groups).flat_map(|g| self.group_bytes(r, g));
            for (to, byte) in row.iter_mut().zip(bytes) {
                *to = byte;
            }
            for g in 0..groups {
                let (s, m) = self.params(r, g);
                scales.push(s);
                mins.push(m);
            }
        }
        (packed, scales, mins)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn group_size(&self) -> usize {
        self.group_size
    }

    /// Bytes in memory: the payload and parameters, with the last block's padding rows.
    pub fn resident_bytes(&self) -> usize {
        self.lines.len() * size_of::<Line>()
    }

    pub(crate) fn groups(&self) -> usize {
        self.cols.div_ceil(self.group_size)
    }

    /// Columns of group `g` (the last one may be short).
    pub(crate) fn group_cols(&self, g: usize) -> usize {
        self.group_size.min(self.cols - g * self.group_size)
    }

    /// Piece lines of group `g`.
    pub(crate) fn pieces(&self, g: usize) -> usize {
        self.group_cols(g).div_ceil(PIECE_COLS)
    }

    /// The first line of group `g` within a block (its pieces, then its parameter line).
    pub(crate) fn group_line(&self, g: usize) -> usize {
        g * (self.group_size / PIECE_COLS + 1)
    }

    /// Lines per block.
    pub(crate) fn stride(&self) -> usize {
        match self.groups() {
            0 => 0,
            groups => self.group_line(groups - 1) + self.pieces(groups - 1) + 1,
        }
    }

    /// The lines of block `b` (rows `16b..16b + 16`).
    pub(crate) fn block(&self, b: usize) -> &[Line] {
        let s = self.stride();
        &self.lines[b * s..(b + 1) * s]
    }

    #[cfg(test)]
    pub(crate) fn blocks(&self) -> usize {
        self.rows.div_ceil(BLOCK_ROWS)
    }

    /// The first line of row `r`'s block and the row's lane in it.
    fn block_lane(&self, r: usize) -> (usize, usize) {
        ((r / BLOCK_ROWS) * self.stride(), r % BLOCK_ROWS)
    }

    /// The nibble of row `r`, column `c`.
    #[inline(always)]
    pub(crate) fn nibble(&self, r: usize, c: usize) -> u8 {
        let (block, lane) = self.block_lane(r);
        let g = c / self.group_size;
        let p = (c % self.group_size) / PIECE_COLS;
        let byte = self.lines[block + self.group_line(g) + p].0[4 * lane + (c % PIECE_COLS) / 2];
        int4_nibble(byte, c)
    }

    /// The scale and minimum of row `r`, group `g`.
    #[inline(always)]
    pub(crate) fn params(&self, r: usize, g: usize) -> (f16, f16) {
        let (block, lane) = self.block_lane(r);
        let line = &self.lines[block + self.group_line(g) + self.pieces(g)].0;
        let at = |i: usize| f16::from_bits(u16::from_le_bytes([line[i], line[i + 1]]));
        (at(2 * lane), at(32 + 2 * lane))
    }

    /// Row `r`'s packed bytes of group `g` in column order (`group_cols(g) / 2` of them).
    fn group_bytes(&self, r: usize, g: usize) -> impl Iterator<Item = u8> + '_ {
        let (block, lane) = self.block_lane(r);
        let at = block + self.group_line(g);
        self.lines[at..at + self.pieces(g)]
            .iter()
            .flat_map(move |line| line.0[4 * lane..4 * lane + 4].iter().copied())
            .take(self.group_cols(g) / 2)
    }

    /// Row `r` dequantized into `out` (`cols` values), as the row-major form decodes it.
    pub(crate) fn decode_row(&self, r: usize, out: &mut [f32]) {
        for g in 0..self.groups() {
            let (s, m) = self.params(r, g);
            let c0 = g * self.group_size;
            let out = &mut out[c0..c0 + self.group_cols(g)];
            decode_int4_group(self.group_bytes(r, g), s.to_f32(), m.to_f32(), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::Rng;

    fn random(rng: &mut Rng, rows: usize, cols: usize, gs: usize) -> (Vec<u8>, Vec<f16>, Vec<f16>) {
        let groups = rows * cols.div_ceil(gs);
        (
            (0..rows * cols / 2).map(|_| rng.next_u64() as u8).collect(),
            (0..groups).map(|_| f16::from_f32(rng.f32())).collect(),
            (0..groups).map(|_| f16::from_f32(-rng.f32())).collect(),
        )
    }

    #[test]
    fn blocks_hold_the_rows_values_and_give_them_back() {
        let mut rng = Rng(7);
        for (rows, cols, gs) in [
            (16, 64, 32),
            (33, 250, 40),
            (5, 96, 48),
            (40, 576, 64),
            (1, 8, 8),
        ] {
            let (packed, scales, mins) = random(&mut rng, rows, cols, gs);
            let b = Int4Blocks::from_rows(rows, cols, &packed, &scales, &mins, gs).unwrap();
            let groups = cols.div_ceil(gs);
            for r in 0..rows {
                for c in 0..cols {
                    let byte = packed[r * cols / 2 + c / 2];
                    let want = if c % 2 == 0 { byte & 15 } else { byte >> 4 };
                    assert_eq!(b.nibble(r, c), want, "{rows}x{cols}/{gs} ({r}, {c})");
                }
                for g in 0..groups {
                    let k = r * groups + g;
                    assert_eq!(b.params(r, g), (scales[k], mins[k]));
                }
            }
            assert_eq!(b.to_rows(), (packed, scales, mins));
            // The padding costs at most the last block's missing rows.
            let row_bytes = b.stride() * 64 / BLOCK_ROWS;
            assert_eq!(
                b.resident_bytes(),
                rows.div_ceil(BLOCK_ROWS) * BLOCK_ROWS * row_bytes
            );
        }
    }

    #[test]
    fn other_group_sizes_and_wrong_lengths_have_no_blocks() {
        let (p, s) = (vec![0u8; 32], vec![f16::ZERO; 4]);
        assert!(Int4Blocks::from_rows(2, 32, &p, &s, &s, 12).is_none());
        assert!(Int4Blocks::from_rows(2, 32, &p, &s, &s, 0).is_none());
        assert!(Int4Blocks::from_rows(2, 32, &p[..31], &s, &s, 16).is_none());
        assert!(Int4Blocks::from_rows(2, 32, &p, &s[..3], &s, 16).is_none());
        assert!(Int4Blocks::from_rows(2, 32, &p, &s, &s, 16).is_some());
    }
}
