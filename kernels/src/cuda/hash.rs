//! The residency hash: what `--check-resident` compares between the bytes the loader decoded
//! (hashed on the CPU while loading) and the bytes resident in GPU memory (hashed by a kernel).
//!
//! The container's stream hash is XXH3-128, whose sequential structure suits a GPU poorly. This
//! hash is built for both: the stream is read as 8-byte little-endian words `w_i` (the last one
//! zero-padded), each word is mixed with its index, `t_i = fmix64(w_i ^ (i * 0x9E3779B97F4A7C15))`
//! (MurmurHash3's 64-bit finalizer), and the hash is `fmix64(sum_i t_i mod 2^64 ^ (len * K))`.
//! The sum makes every word's term independent of the others, so any split of the work (rayon
//! workers over frames, GPU threads over words) gives the same value, and a changed byte changes
//! its word's term. It is a check against corruption in the copy, not a cryptographic hash.

const K_INDEX: u64 = 0x9E37_79B9_7F4A_7C15;
const K_LEN: u64 = 0xC2B2_AE3D_27D4_EB4F;

#[inline]
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

#[inline]
fn term(word: u64, index: u64) -> u64 {
    fmix64(word ^ index.wrapping_mul(K_INDEX))
}

/// The final value from the sum of terms and the stream length.
pub fn finish(sum: u64, len: u64) -> u64 {
    fmix64(sum ^ len.wrapping_mul(K_LEN))
}

/// The whole-stream hash of `bytes`.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut acc = StreamHash::default();
    acc.add(0, bytes);
    acc.finish(bytes.len() as u64)
}

/// Accumulates the hash of one stream from pieces given in any order. Pieces that start or end
/// inside a word leave their bytes of that word aside; [`StreamHash::finish`] assembles them.
#[derive(Clone, Debug, Default)]
pub struct StreamHash {
    sum: u64,
    /// Partial words: word index -> (bytes, mask of bytes present).
    edges: std::collections::BTreeMap<u64, ([u8; 8], u8)>,
}

impl StreamHash {
    /// Adds `bytes`, found at byte offset `offset` of the stream.
    pub fn add(&mut self, offset: u64, bytes: &[u8]) {
        let mut pos = offset;
        let mut rest = bytes;
        // Leading bytes up to a word boundary.
        while !rest.is_empty() && !pos.is_multiple_of(8) {
            self.edge(pos, rest[0]);
            pos += 1;
            rest = &rest[1..];
        }
        let words = rest.len() / 8;
        let mut sum = 0u64;
        for (k, c) in rest[..words * 8].chunks_exact(8).enumerate() {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            sum = sum.wrapping_add(term(w, pos / 8 + k as u64));
        }
        self.sum = self.sum.wrapping_add(sum);
        pos += (words * 8) as u64;
        for &b in &rest[words * 8..] {
            self.edge(pos, b);
            pos += 1;
        }
    }

    fn edge(&mut self, pos: u64, b: u8) {
        let e = self.edges.entry(pos / 8).or_insert(([0; 8], 0));
        e.0[(pos % 8) as usize] = b;
        e.1 |= 1 << (pos % 8);
    }

    /// Merges another accumulator of the same stream.
    pub fn merge(&mut self, other: StreamHash) {
        self.sum = self.sum.wrapping_add(other.sum);
        for (i, (bytes, mask)) in other.edges {
            let e = self.edges.entry(i).or_insert(([0; 8], 0));
            for (k, &b) in bytes.iter().enumerate() {
                if mask & (1 << k) != 0 {
                    e.0[k] = b;
                }
            }
            e.1 |= mask;
        }
    }

    /// The hash of the stream of `len` bytes (bytes past `len` of the last word are zero).
    pub fn finish(mut self, len: u64) -> u64 {
        let edges = std::mem::take(&mut self.edges);
        for (i, (bytes, _)) in edges {
            self.sum = self.sum.wrapping_add(term(u64::from_le_bytes(bytes), i));
        }
        finish(self.sum, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_split_gives_the_same_hash() {
        let data: Vec<u8> = (0..1003u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = hash(&data);
        for cut in [1usize, 7, 8, 9, 500, 1002] {
            let mut a = StreamHash::default();
            let mut b = StreamHash::default();
            b.add(cut as u64, &data[cut..]);
            a.add(0, &data[..cut]);
            a.merge(b);
            assert_eq!(a.finish(data.len() as u64), whole, "cut {cut}");
        }
        let mut flipped = data.clone();
        flipped[77] ^= 1;
        assert_ne!(hash(&flipped), whole);
        assert_ne!(hash(&data[..1002]), whole);
    }
}
