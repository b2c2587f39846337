//! A packed model as users name it: one `.cllm` file or a shard set (`NAME-0000K-of-0000N.cllm`,
//! named by its first shard, any shard, or a glob pattern), memory-mapped. Every tensor of the
//! set is reached by its name or its position in the set's name order; each frame's pages are
//! handed back to the kernel once read, so reading the whole set keeps resident memory bounded.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cllm_format::codec::StreamSpec;
use cllm_format::index::TensorEntry;
use cllm_format::reader::{Release, SharedBytes};
use cllm_format::{Codec, Container, Index, Limits};
use memmap2::Mmap;

use crate::error::LoadError;

/// One opened container of a packed model.
pub struct Shard {
    pub path: PathBuf,
    pub container: Container<'static>,
}

/// An opened packed model: one container, or every shard of a set, checked to belong together.
pub struct Packed {
    shards: Vec<Shard>,
    /// Every tensor, in name order: (shard, position in that shard's index).
    tensors: Vec<(usize, usize)>,
}

fn set_error(path: &Path, msg: String) -> LoadError {
    LoadError::Format {
        path: path.to_path_buf(),
        source: cllm_format::FormatError::Set(msg),
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Maps `path` read-only, with a release hook that drops a read range's pages from this process.
pub fn map_container(path: &Path, limits: &Limits) -> Result<Container<'static>, LoadError> {
    let f = File::open(path).map_err(|e| LoadError::io(path, e))?;
    // SAFETY: read-only map; a file changed underneath is caught by the checksums.
    let map = Arc::new(unsafe { Mmap::map(&f) }.map_err(|e| LoadError::io(path, e))?);
    let shared: SharedBytes = map.clone();
    let c = Container::open_shared(shared, limits).map_err(|e| LoadError::Format {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(c.with_release(page_release(map)))
}

/// `MADV_DONTNEED` over the pages that cover each released range (rounded outward: a page shared
/// with a neighbouring frame is simply read again if that frame still needs it).
fn page_release(map: Arc<Mmap>) -> Release {
    Arc::new(move |offset: u64, len: u64| {
        #[cfg(unix)]
        {
            const PAGE: u64 = 4096;
            let start = offset / PAGE * PAGE;
            let end = (offset.saturating_add(len)).div_ceil(PAGE) * PAGE;
            let end = end.min(map.len() as u64);
            if end > start {
                // SAFETY: the map is read-only and file-backed, so dropped pages are read back
                // from the file on the next access; no reference into them is held across this.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start as usize,
                        (end - start) as usize,
                    )
                };
            }
        }
        #[cfg(not(unix))]
        let _ = (&map, offset, len);
    })
}

/// Hands the pages under `bytes`, a slice of a read-only file mapping, back to the kernel
/// (`MADV_DONTNEED`, rounded outward to whole pages): they stop counting towards this process's
/// resident memory and are read again from the file if touched later.
pub fn release_mapped(bytes: &[u8]) {
    #[cfg(unix)]
    {
        if bytes.is_empty() {
            return;
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let start = bytes.as_ptr() as usize / page * page;
        let end = (bytes.as_ptr() as usize + bytes.len()).div_ceil(page) * page;
        // SAFETY: the range covers whole pages of a read-only, file-backed mapping that contains
        // `bytes` (mappings are page-granular), so dropping them only costs a re-read.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
    #[cfg(not(unix))]
    let _ = bytes;
}

impl Packed {
    /// Opens a container or a shard set. A set is named by any of its shards
    /// (`NAME-0000K-of-0000N.cllm`: the others are found beside it) or by a glob pattern over
    /// file names (`DIR/NAME-*.cllm`), which must match exactly the set's shards. A shard that
    /// is missing, extra, misplaced, cut short or from another pack is an error naming its file.
    pub fn open(path: &Path) -> Result<Packed, LoadError> {
        let limits = Limits::default();
        let text = path.to_string_lossy();
        if text.contains(['*', '?', '[']) {
            return Self::open_pattern(path, &limits);
        }
        let container = map_container(path, &limits)?;
        let Some(set) = container.index.set.clone() else {
            return Ok(Packed::from_shards(vec![Shard {
                path: path.to_path_buf(),
                container,
            }]));
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some((stem, _, _)) = cllm_format::shard::parse_shard_file_name(&name) else {
            return Err(set_error(
                path,
                format!(
                    "holds shard {} of {}, but its name is not NAME-0000K-of-0000N.cllm, so the                      other shards cannot be found: name the set by a pattern (e.g. 'DIR/*.cllm')",
                    set.shard, set.count
                ),
            ));
        };
        let dir = parent_dir(path);
        let expected: Vec<PathBuf> = (1..=set.count)
            .map(|k| dir.join(cllm_format::shard::shard_file_name(stem, k, set.count)))
            .collect();
        // Files that claim a position outside the set, under the set's own name pattern.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if let Some((s, k, count)) = cllm_format::shard::parse_shard_file_name(&n) {
                    if s == stem && count == set.count && (k == 0 || k > count) {
                        return Err(set_error(
                            &e.path(),
                            format!("an extra shard: the set has {} shards", set.count),
                        ));
                    }
                }
            }
        }
        let mut opened = Vec::with_capacity(expected.len());
        let mut given = Some(container);
        for (k, p) in expected.iter().enumerate() {
            let c = if p.file_name() == path.file_name() {
                given.take().expect("the given shard is listed once")
            } else if !p.exists() {
                return Err(set_error(
                    p,
                    format!(
                        "shard {} of {} is missing (set {}, named by {})",
                        k + 1,
                        set.count,
                        set.id,
                        path.display()
                    ),
                ));
            } else {
                map_container(p, &limits)?
            };
            opened.push(Shard {
                path: p.clone(),
                container: c,
            });
        }
        Self::bind(opened, true)
    }

    fn open_pattern(pattern: &Path, limits: &Limits) -> Result<Packed, LoadError> {
        let dir = parent_dir(pattern);
        let glob = pattern
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let matcher = globset::Glob::new(&glob)
            .map_err(|e| set_error(pattern, format!("bad pattern: {e}")))?
            .compile_matcher();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| LoadError::io(&dir, e))?
            .flatten()
            .filter(|e| matcher.is_match(e.file_name()))
            .map(|e| e.path())
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(set_error(pattern, "no file matches the pattern".into()));
        }
        let mut opened = Vec::with_capacity(paths.len());
        for p in paths {
            let container = map_container(&p, limits)?;
            opened.push(Shard { path: p, container });
        }
        if opened.len() == 1 && opened[0].container.index.set.is_none() {
            return Ok(Packed::from_shards(opened));
        }
        if let Some(plain) = opened.iter().find(|s| s.container.index.set.is_none()) {
            return Err(set_error(
                &plain.path,
                "a single container, not a shard, matched with a shard set".into(),
            ));
        }
        Self::bind(opened, false)
    }

    /// Checks that `opened` is exactly one complete set and puts it in shard order. With
    /// `by_name`, each file must sit under the name of the position it holds.
    fn bind(opened: Vec<Shard>, by_name: bool) -> Result<Packed, LoadError> {
        let labelled: Vec<(String, &Index)> = opened
            .iter()
            .map(|s| (s.path.display().to_string(), &s.container.index))
            .collect();
        let order = cllm_format::shard::order_set(&labelled).map_err(|e| LoadError::Format {
            path: opened[0].path.clone(),
            source: e,
        })?;
        if by_name {
            for (k, sh) in opened.iter().enumerate() {
                let set = sh
                    .container
                    .index
                    .set
                    .as_ref()
                    .expect("checked by order_set");
                if set.shard != k as u64 + 1 {
                    return Err(set_error(
                        &sh.path,
                        format!(
                            "holds shard {} of {}, but its name says shard {}: shards renamed or \
                             reordered",
                            set.shard,
                            set.count,
                            k + 1
                        ),
                    ));
                }
            }
        }
        let mut slots: Vec<Option<Shard>> = opened.into_iter().map(Some).collect();
        let shards = order
            .iter()
            .map(|&i| slots[i].take().expect("each shard once"))
            .collect();
        Ok(Packed::from_shards(shards))
    }

    fn from_shards(shards: Vec<Shard>) -> Packed {
        let mut tensors: Vec<(usize, usize)> = shards
            .iter()
            .enumerate()
            .flat_map(|(s, sh)| (0..sh.container.tensors().len()).map(move |i| (s, i)))
            .collect();
        tensors.sort_by(|a, b| {
            let name = |(s, i): &(usize, usize)| shards[*s].container.tensors()[*i].name.as_str();
            name(a).cmp(name(b))
        });
        Packed { shards, tensors }
    }

    /// Whether this is a shard set (even of one shard) rather than a single container.
    pub fn is_set(&self) -> bool {
        self.shards[0].container.index.set.is_some()
    }

    /// The path users named: the single file, or the set's first shard.
    pub fn path(&self) -> &Path {
        &self.shards[0].path
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The first container's index: its files, policy and provenance describe the whole set.
    pub fn index(&self) -> &Index {
        &self.shards[0].container.index
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether every tensor is stored losslessly.
    pub fn is_lossless(&self) -> bool {
        (0..self.len()).all(|i| self.codec(i).is_lossless())
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The `i`-th tensor in name order.
    pub fn tensor(&self, i: usize) -> &TensorEntry {
        let (s, k) = self.tensors[i];
        &self.shards[s].container.tensors()[k]
    }

    pub fn tensors(&self) -> impl ExactSizeIterator<Item = &TensorEntry> + '_ {
        (0..self.len()).map(|i| self.tensor(i))
    }

    /// Which shard holds tensor `i`, and where in that shard's index.
    pub fn locate(&self, i: usize) -> (usize, usize) {
        self.tensors[i]
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        self.tensors
            .binary_search_by(|(s, k)| {
                self.shards[*s].container.tensors()[*k]
                    .name
                    .as_str()
                    .cmp(name)
            })
            .ok()
    }

    pub fn codec(&self, i: usize) -> Codec {
        let (s, k) = self.tensors[i];
        self.shards[s].container.codec(k)
    }

    pub fn stream_specs(&self, i: usize) -> &[StreamSpec] {
        let (s, k) = self.tensors[i];
        self.shards[s].container.stream_specs(k)
    }

    fn err(&self, s: usize) -> impl Fn(cllm_format::FormatError) -> LoadError + '_ {
        move |e| LoadError::Format {
            path: self.shards[s].path.clone(),
            source: e,
        }
    }

    /// Every stream of tensor `i` as stored (quantized tensors stay quantized), each frame and
    /// stream hash checked.
    pub fn decode_tensor(&self, i: usize) -> Result<Vec<Vec<u8>>, LoadError> {
        let (s, k) = self.tensors[i];
        self.shards[s]
            .container
            .decode_tensor(k)
            .map_err(self.err(s))
    }

    /// Tensor `i` in its source dtype: lossless tensors as packed, quantized ones dequantized.
    pub fn tensor_source_bytes(&self, i: usize) -> Result<Vec<u8>, LoadError> {
        let (s, k) = self.tensors[i];
        self.shards[s]
            .container
            .tensor_source_bytes(k)
            .map_err(self.err(s))
    }

    /// An embedded file (config, tokenizer, ...), checked; from the first container.
    /// The calibration's importance vectors, when the container has them (spec section 4.7).
    pub fn importance(&self) -> Result<Option<cllm_format::importance::Importance>, LoadError> {
        let Some(bytes) = self.read_file(cllm_format::importance::IMPORTANCE_FILE)? else {
            return Ok(None);
        };
        cllm_format::importance::Importance::from_bytes(&bytes)
            .map(Some)
            .map_err(self.err(0))
    }

    pub fn read_file(&self, name: &str) -> Result<Option<Vec<u8>>, LoadError> {
        self.shards[0]
            .container
            .read_file(name)
            .map_err(self.err(0))
    }
}

impl Packed {
    /// Stream `stream` of tensor `i`, a frame at a time (see [`Container::stream_chunks`]).
    pub fn stream_chunks(
        &self,
        i: usize,
        stream: usize,
        each: impl FnMut(&[u8]) -> Result<(), LoadError>,
    ) -> Result<(), LoadError> {
        let (s, k) = self.tensors[i];
        self.shards[s]
            .container
            .stream_chunks(k, stream, each)
            .map_err(|e| self.located(s, e))
    }

    /// Stream `stream` of tensor `i` whole (for the small streams: scales, mins), hash checked.
    pub fn decode_stream(&self, i: usize, stream: usize) -> Result<Vec<u8>, LoadError> {
        let (s, k) = self.tensors[i];
        let c = &self.shards[s].container;
        let t = &c.tensors()[k];
        c.decode_stream(
            &cllm_format::reader::tensor_owner(&t.name),
            &t.streams[stream],
            c.stream_specs(k)[stream].encoding,
        )
        .map_err(self.err(s))
    }

    /// An `int4`, `int4m` or `int4s` tensor's per-group f16 scales and minimums as little-endian
    /// bytes, row-major (the `int4` streams; expanded from the super-block codes for `int4s`).
    pub fn int4_param_bytes(&self, i: usize) -> Result<(Vec<u8>, Vec<u8>), LoadError> {
        let t = self.tensor(i);
        let codec = self.codec(i);
        let params = (1..t.streams.len())
            .map(|s| self.decode_stream(i, s))
            .collect::<Result<Vec<_>, _>>()?;
        cllm_format::tensor::int4_param_bytes(codec, &t.shape, &params).ok_or_else(|| {
            self.err(self.tensors[i].0)(cllm_format::FormatError::Tensor {
                tensor: t.name.clone(),
                msg: format!("codec {codec} is not an int4 codec"),
            })
        })
    }

    /// Tensor `i` in its source dtype, a frame at a time (see [`Container::source_chunks`]).
    pub fn source_chunks(
        &self,
        i: usize,
        each: impl FnMut(&[u8]) -> Result<(), LoadError>,
    ) -> Result<(), LoadError> {
        let (s, k) = self.tensors[i];
        self.shards[s]
            .container
            .source_chunks(k, each)
            .map_err(|e| self.located(s, e))
    }

    /// A format error from the container layer gets the shard's path; others pass through.
    fn located(&self, s: usize, e: LoadError) -> LoadError {
        match e {
            LoadError::Format { path, source } if path.as_os_str().is_empty() => {
                LoadError::Format {
                    path: self.shards[s].path.clone(),
                    source,
                }
            }
            other => other,
        }
    }
}

impl From<cllm_format::FormatError> for LoadError {
    /// Path filled in by [`Packed`] where the error surfaces.
    fn from(source: cllm_format::FormatError) -> LoadError {
        LoadError::Format {
            path: PathBuf::new(),
            source,
        }
    }
}
