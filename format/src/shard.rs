//! Shard sets (spec/FORMAT.md section 6, version 1.2): a model cut into several containers that
//! each verify alone and together bind the set. Every shard's index carries the same `set`
//! record: the set's manifest (each shard's tensor count and digest), its identity (the hash of
//! that manifest) and the shard's own position. This module computes the digests and checks that
//! a group of opened containers is exactly one complete set; it never touches the file system.

use serde::{Deserialize, Serialize};

use crate::error::{FormatError, Result};
use crate::hash::Hasher128;
use crate::index::Index;

/// The minor version that introduced shard sets.
pub const MIN_MINOR: u16 = 2;

/// The largest shard count a set may declare (five-digit shard numbers in file names).
pub const MAX_SHARDS: u64 = 99_999;

/// The `set` member of a shard's index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRecord {
    /// XXH3-128 of the manifest text ([`manifest_text`]): the set's identity, and the hash of its
    /// whole index, the same in every shard.
    pub id: String,
    /// This shard's position, 1 to `count`.
    pub shard: u64,
    pub count: u64,
    /// One entry per shard, in position order.
    #[serde(deserialize_with = "crate::index::bounded::vec::<_, _, 99999>")]
    pub shards: Vec<ShardSummary>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSummary {
    pub tensors: u64,
    /// [`shard_digest`] of that shard's index.
    pub digest: String,
}

/// The canonical file name of shard `k` of `n`: `STEM-0000K-of-0000N.cllm`.
pub fn shard_file_name(stem: &str, k: u64, n: u64) -> String {
    format!("{stem}-{k:05}-of-{n:05}.cllm")
}

/// `(stem, k, n)` when `name` is a canonical shard file name.
pub fn parse_shard_file_name(name: &str) -> Option<(&str, u64, u64)> {
    let base = name.strip_suffix(".cllm")?;
    // STEM-KKKKK-of-NNNNN: the last 15 bytes are "-KKKKK-of-NNNNN" after the stem.
    if base.len() < 16 || !base.is_char_boundary(base.len() - 15) {
        return None;
    }
    let (stem, tail) = base.split_at(base.len() - 15);
    let b = tail.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    if b[0] != b'-' || &b[6..10] != b"-of-" || !digits(&b[1..6]) || !digits(&b[10..15]) {
        return None;
    }
    let k = tail[1..6].parse().ok()?;
    let n = tail[10..15].parse().ok()?;
    (!stem.is_empty()).then_some((stem, k, n))
}

/// The digest of one shard: XXH3-128 of one line per tensor
/// (`name TAB codec TAB group_size TAB dtype TAB shape TAB source_xxh3 TAB stream hashes LF`,
/// shape and stream hashes comma-separated, group size 0 where the codec has none), then one line
/// per embedded file (`file TAB name TAB xxh3 LF`), in index order.
pub fn shard_digest(index: &Index) -> String {
    let mut h = Hasher128::default();
    for t in &index.tensors {
        let shape: Vec<String> = t.shape.iter().map(u64::to_string).collect();
        let streams: Vec<&str> = t.streams.iter().map(|s| s.xxh3.as_str()).collect();
        h.update(
            format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                t.name,
                t.codec,
                t.group_size.unwrap_or(0),
                t.dtype,
                shape.join(","),
                t.source_xxh3,
                streams.join(",")
            )
            .as_bytes(),
        );
    }
    for f in &index.files {
        h.update(format!("file\t{}\t{}\n", f.name, f.xxh3).as_bytes());
    }
    h.hex()
}

/// The manifest text whose hash is the set's identity: `cllm-set LF`, then
/// `tensors TAB digest LF` per shard.
pub fn manifest_text(shards: &[ShardSummary]) -> String {
    let mut s = String::from("cllm-set\n");
    for sh in shards {
        s.push_str(&format!("{}\t{}\n", sh.tensors, sh.digest));
    }
    s
}

/// The `set` records of a complete set, given each shard's index (without its `set`) in order.
pub fn bind(indexes: &[&Index]) -> Vec<SetRecord> {
    let shards: Vec<ShardSummary> = indexes
        .iter()
        .map(|i| ShardSummary {
            tensors: i.tensors.len() as u64,
            digest: shard_digest(i),
        })
        .collect();
    let id = crate::hash::xxh3_128_hex(manifest_text(&shards).as_bytes());
    (1..=indexes.len() as u64)
        .map(|k| SetRecord {
            id: id.clone(),
            shard: k,
            count: indexes.len() as u64,
            shards: shards.clone(),
        })
        .collect()
}

/// Checks one shard's record against its own index: its manifest hashes to its id, its position
/// is in range, and its own digest and tensor count are the manifest's entry for that position.
pub fn check_record(index: &Index) -> Result<&SetRecord> {
    let Some(set) = &index.set else {
        return Err(FormatError::Set(
            "not a shard: the index has no set record".into(),
        ));
    };
    if set.count == 0 || set.count > MAX_SHARDS || set.shards.len() as u64 != set.count {
        return Err(FormatError::Set(format!(
            "set declares {} shards and lists {} (1..={MAX_SHARDS} allowed)",
            set.count,
            set.shards.len()
        )));
    }
    if set.shard == 0 || set.shard > set.count {
        return Err(FormatError::Set(format!(
            "shard position {} outside 1..={}",
            set.shard, set.count
        )));
    }
    let id = crate::hash::xxh3_128_hex(manifest_text(&set.shards).as_bytes());
    if id != set.id {
        return Err(FormatError::Set(format!(
            "the set manifest hashes to {id}, its id says {} (corrupted set record)",
            set.id
        )));
    }
    let own = &set.shards[(set.shard - 1) as usize];
    let digest = shard_digest(index);
    if own.digest != digest || own.tensors != index.tensors.len() as u64 {
        return Err(FormatError::Set(format!(
            "shard {} of {}: its tensors and files digest to {digest} ({} tensors), the set manifest \
             says {} ({} tensors): the shard does not belong to this set",
            set.shard,
            set.count,
            index.tensors.len(),
            own.digest,
            own.tensors
        )));
    }
    Ok(set)
}

/// Orders a group of opened shards (each labelled, typically by its path) into one complete set:
/// every shard passes [`check_record`], all share one id, each position 1..=count appears exactly
/// once, and no tensor name appears in two shards. Returns the labels' positions in shard order.
/// Errors name the shard (its label) that is missing, extra, misplaced or from another set.
pub fn order_set(shards: &[(String, &Index)]) -> Result<Vec<usize>> {
    let first = shards
        .first()
        .ok_or_else(|| FormatError::Set("no shard given".into()))?;
    let head = check_record(first.1).map_err(|e| FormatError::Set(format!("{}: {e}", first.0)))?;
    let mut slots: Vec<Option<usize>> = vec![None; head.count as usize];
    for (i, (label, index)) in shards.iter().enumerate() {
        let set = check_record(index).map_err(|e| FormatError::Set(format!("{label}: {e}")))?;
        if set.id != head.id || set.count != head.count {
            return Err(FormatError::Set(format!(
                "{label}: shard {} of {} of set {} is not part of set {} of {} shards ({}): \
                 a shard from another pack",
                set.shard, set.count, set.id, head.id, head.count, first.0
            )));
        }
        let slot = &mut slots[(set.shard - 1) as usize];
        if let Some(other) = slot {
            return Err(FormatError::Set(format!(
                "{label} and {} both hold shard {} of {}: an extra copy",
                shards[*other].0, set.shard, set.count
            )));
        }
        *slot = Some(i);
    }
    let missing: Vec<String> = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_none())
        .map(|(k, _)| (k + 1).to_string())
        .collect();
    if !missing.is_empty() {
        return Err(FormatError::Set(format!(
            "shard(s) {} of {} missing (set {})",
            missing.join(", "),
            head.count,
            head.id
        )));
    }
    let order: Vec<usize> = slots.into_iter().map(|s| s.expect("checked")).collect();
    let mut names: Vec<(&str, usize)> = order
        .iter()
        .flat_map(|&i| {
            shards[i]
                .1
                .tensors
                .iter()
                .map(move |t| (t.name.as_str(), i))
        })
        .collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(FormatError::Set(format!(
            "tensor {} appears in {} and {}",
            w[0].0, shards[w[0].1].0, shards[w[1].1].0
        )));
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_round_trip_and_reject_near_misses() {
        let n = shard_file_name("model", 3, 12);
        assert_eq!(n, "model-00003-of-00012.cllm");
        assert_eq!(parse_shard_file_name(&n), Some(("model", 3, 12)));
        assert_eq!(
            parse_shard_file_name("a-b-00001-of-00002.cllm"),
            Some(("a-b", 1, 2))
        );
        for bad in [
            "model.cllm",
            "-00001-of-00002.cllm",
            "m-0001-of-00002.cllm",
            "m-00001-of-0002.cllm",
            "m-00001_of-00002.cllm",
            "m-0000x-of-00002.cllm",
            "m-00001-of-00002.gguf",
        ] {
            assert_eq!(parse_shard_file_name(bad), None, "{bad}");
        }
    }
}
