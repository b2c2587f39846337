//! Frame encodings: raw, zstd, and byte planes then zstd (spec/FORMAT.md section 4.1).
//! Decoding never produces more bytes than the frame declares.

use crate::codec::Encoding;

/// How hard zstd looks for repeats. Trained weights and quantized codes have almost none: their
/// redundancy is in the symbol frequencies, which zstd's Huffman-coded literals capture. Matches
/// found by the default search cost more bits than the literals they replace, so for such data
/// the writer keeps zstd's match finder nearly blind: faster both ways and smaller
/// (docs/decisions/0001).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effort {
    /// zstd at the given level: general data (embedded files, the `zstd` codec).
    Level(i32),
    /// Literal-heavy parameters for float planes and quantized codes.
    Entropy,
}

fn compressor_for(effort: Effort) -> std::io::Result<zstd::bulk::Compressor<'static>> {
    use zstd::stream::raw::CParameter;
    match effort {
        Effort::Level(level) => zstd::bulk::Compressor::new(level),
        Effort::Entropy => {
            let mut c = zstd::bulk::Compressor::new(1)?;
            c.set_parameter(CParameter::Strategy(zstd::zstd_safe::Strategy::ZSTD_fast))?;
            c.set_parameter(CParameter::WindowLog(17))?;
            c.set_parameter(CParameter::HashLog(6))?;
            c.set_parameter(CParameter::ChainLog(6))?;
            c.set_parameter(CParameter::SearchLog(1))?;
            c.set_parameter(CParameter::MinMatch(7))?;
            Ok(c)
        }
    }
}

fn zstd_compress(data: &[u8], effort: Effort) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static CCTX: std::cell::RefCell<Option<(Effort, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    CCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(e, _)| *e != effort) {
            *slot = Some((effort, compressor_for(effort)?));
        }
        let (_, c) = slot.as_mut().expect("set above");
        c.compress(data)
    })
}

/// Encodes one frame's decoded bytes into its stored bytes.
pub fn encode_frame(
    encoding: Encoding,
    decoded: &[u8],
    effort: Effort,
) -> std::io::Result<Vec<u8>> {
    match encoding {
        Encoding::Raw => Ok(decoded.to_vec()),
        Encoding::Zstd => zstd_compress(decoded, effort),
        Encoding::BytePlanes(width) => zstd_compress(&split_planes(decoded, width), effort),
    }
}

/// Why a frame failed to decode.
#[derive(Debug)]
pub enum DecodeError {
    /// The zstd stream is malformed, or would inflate past the declared length.
    Zstd(String),
    /// It inflated to fewer bytes than declared.
    Short { got: usize, declared: usize },
    /// Raw frames store exactly their decoded bytes.
    RawLength { stored: usize, declared: usize },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Zstd(e) => write!(f, "zstd decode failed: {e}"),
            DecodeError::Short { got, declared } => {
                write!(f, "decoded to {got} bytes, index declares {declared}")
            }
            DecodeError::RawLength { stored, declared } => {
                write!(f, "raw frame stores {stored} bytes but declares {declared}")
            }
        }
    }
}

/// Decodes a frame into `out`, which must be exactly the declared decoded length.
/// zstd is told the capacity, so a frame that claims 1 MiB but inflates to gigabytes fails after
/// 1 MiB of output instead of allocating.
pub fn decode_frame_into(
    encoding: Encoding,
    stored: &[u8],
    out: &mut [u8],
    scratch: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let declared = out.len();
    match encoding {
        Encoding::Raw => {
            if stored.len() != declared {
                return Err(DecodeError::RawLength {
                    stored: stored.len(),
                    declared,
                });
            }
            out.copy_from_slice(stored);
            Ok(())
        }
        Encoding::Zstd => {
            let got = zstd_decompress_into(stored, out)?;
            if got != declared {
                return Err(DecodeError::Short { got, declared });
            }
            Ok(())
        }
        Encoding::BytePlanes(width) => {
            scratch.clear();
            scratch.resize(declared, 0);
            let got = zstd_decompress_into(stored, scratch)?;
            if got != declared {
                return Err(DecodeError::Short { got, declared });
            }
            join_planes(scratch, out, width);
            Ok(())
        }
    }
}

/// The stored bytes must be exactly one zstd frame: no second frame, no skippable frame, nothing
/// trailing (spec section 4).
fn check_single_frame(stored: &[u8]) -> Result<(), DecodeError> {
    const SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
    const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
    if stored.len() >= 4 {
        let magic = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
        if magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC {
            return Err(DecodeError::Zstd(
                "a skippable frame, not a zstd data frame".into(),
            ));
        }
    }
    match zstd::zstd_safe::find_frame_compressed_size(stored) {
        Ok(n) if n == stored.len() => Ok(()),
        Ok(n) => Err(DecodeError::Zstd(format!(
            "{} bytes follow the zstd frame's {n}: a frame holds exactly one zstd frame",
            stored.len() - n
        ))),
        Err(code) => Err(DecodeError::Zstd(
            zstd::zstd_safe::get_error_name(code).to_string(),
        )),
    }
}

fn zstd_decompress_into(stored: &[u8], out: &mut [u8]) -> Result<usize, DecodeError> {
    check_single_frame(stored)?;
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                zstd::bulk::Decompressor::new().map_err(|e| DecodeError::Zstd(e.to_string()))?,
            );
        }
        let d = slot.as_mut().expect("initialized above");
        d.decompress_to_buffer(stored, out)
            .map_err(|e| DecodeError::Zstd(e.to_string()))
    })
}

/// Element `i` of width `w`: rotate left by one bit, then byte `k` (most significant first) goes to
/// plane `k`.
pub fn split_planes(decoded: &[u8], width: usize) -> Vec<u8> {
    let n = decoded.len() / width;
    let mut planes = vec![0u8; n * width];
    match width {
        2 => {
            let (hi, lo) = planes.split_at_mut(n);
            for ((c, h), l) in decoded.chunks_exact(2).zip(hi).zip(lo) {
                let r = u16::from_le_bytes([c[0], c[1]]).rotate_left(1);
                *h = (r >> 8) as u8;
                *l = r as u8;
            }
        }
        4 => {
            for (i, c) in decoded.chunks_exact(4).enumerate() {
                let r = u32::from_le_bytes([c[0], c[1], c[2], c[3]]).rotate_left(1);
                let be = r.to_be_bytes();
                for (k, b) in be.iter().enumerate() {
                    planes[k * n + i] = *b;
                }
            }
        }
        _ => unreachable!("byte planes are defined for widths 2 and 4"),
    }
    planes
}

fn join_planes(planes: &[u8], out: &mut [u8], width: usize) {
    let n = planes.len() / width;
    match width {
        2 => {
            let (hi, lo) = planes.split_at(n);
            for ((o, &h), &l) in out.chunks_exact_mut(2).zip(hi).zip(lo) {
                let r = (((h as u16) << 8) | l as u16).rotate_right(1);
                o[0] = r as u8;
                o[1] = (r >> 8) as u8;
            }
        }
        4 => {
            for (i, o) in out.chunks_exact_mut(4).enumerate() {
                let r = u32::from_be_bytes([
                    planes[i],
                    planes[n + i],
                    planes[2 * n + i],
                    planes[3 * n + i],
                ]);
                o.copy_from_slice(&r.rotate_right(1).to_le_bytes());
            }
        }
        _ => unreachable!("byte planes are defined for widths 2 and 4"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_round_trip() {
        let data: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect();
        for w in [2, 4] {
            let p = split_planes(&data, w);
            let mut back = vec![0u8; data.len()];
            join_planes(&p, &mut back, w);
            assert_eq!(back, data);
        }
    }

    #[test]
    fn bf16_exponent_lands_in_plane_zero() {
        // 1.0 in bf16 is 0x3f80: exponent 0x7f, sign 0, mantissa 0.
        let p = split_planes(&0x3f80u16.to_le_bytes(), 2);
        assert_eq!(p, vec![0x7f, 0x00]);
        // -1.0: same exponent, sign in bit 0 of the low plane.
        let p = split_planes(&0xbf80u16.to_le_bytes(), 2);
        assert_eq!(p, vec![0x7f, 0x01]);
    }

    #[test]
    fn two_concatenated_zstd_frames_are_refused() {
        let one = encode_frame(Encoding::Zstd, b"abcdabcd", Effort::Level(3)).unwrap();
        let two = [one.clone(), one.clone()].concat();
        let mut out = vec![0u8; 16];
        let mut scratch = Vec::new();
        let e = decode_frame_into(Encoding::Zstd, &two, &mut out, &mut scratch).unwrap_err();
        assert!(e.to_string().contains("exactly one zstd frame"), "{e}");
        let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0];
        skippable.extend_from_slice(&one);
        assert!(
            decode_frame_into(Encoding::Zstd, &skippable[..8], &mut out[..0], &mut scratch)
                .is_err()
        );
        let mut out = vec![0u8; 8];
        decode_frame_into(Encoding::Zstd, &one, &mut out, &mut scratch).unwrap();
        assert_eq!(&out, b"abcdabcd");
    }

    #[test]
    fn inflation_beyond_declared_length_fails() {
        let big = vec![0u8; 1 << 20];
        let stored = encode_frame(Encoding::Zstd, &big, Effort::Level(3)).unwrap();
        let mut out = vec![0u8; 1024];
        let mut scratch = Vec::new();
        assert!(decode_frame_into(Encoding::Zstd, &stored, &mut out, &mut scratch).is_err());
        let mut out = vec![0u8; 2 << 20];
        assert!(matches!(
            decode_frame_into(Encoding::Zstd, &stored, &mut out, &mut scratch),
            Err(DecodeError::Short { .. })
        ));
    }
}
