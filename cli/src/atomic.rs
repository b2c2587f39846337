//! Writing outputs so that an interrupted command never leaves a partial file or folder under the
//! final name, and never clobbers a good one: write beside it, fsync, then rename.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

fn parent_of(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

fn sync_dir(dir: &Path) {
    // Persisting the rename needs the directory synced; not every file system allows it.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `dest` through `fill`; on any error the temporary file is removed and `dest` is untouched.
pub fn write_file<T>(
    dest: &Path,
    fill: impl FnOnce(&mut BufWriter<&File>) -> Result<T>,
) -> Result<T> {
    let dir = parent_of(dest);
    let name = dest
        .file_name()
        .with_context(|| format!("{}: not a file path", dest.display()))?
        .to_string_lossy()
        .into_owned();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let value = {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
        let v = fill(&mut w).with_context(|| format!("writing {}", dest.display()))?;
        w.flush()
            .with_context(|| format!("writing {}", dest.display()))?;
        v
    };
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", tmp.path().display()))?;
    // Temporary files are created private (0600); the result is an ordinary file.
    set_mode(tmp.path(), 0o644);
    tmp.persist(dest)
        .with_context(|| format!("renaming into {}", dest.display()))?;
    sync_dir(&dir);
    Ok(value)
}

/// Creates folder `dest` through `fill`, which writes into the temporary folder it is given.
/// `dest` must not exist, or be an empty folder.
pub fn write_dir<T>(dest: &Path, fill: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    if dest.exists() {
        let empty = std::fs::read_dir(dest)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            bail!("{} exists and is not an empty folder", dest.display());
        }
    }
    let dir = parent_of(dest);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = dest
        .file_name()
        .with_context(|| format!("{}: not a folder path", dest.display()))?
        .to_string_lossy()
        .into_owned();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempdir_in(&dir)
        .with_context(|| format!("creating a temporary folder in {}", dir.display()))?;
    let value = fill(tmp.path())?;
    set_mode(tmp.path(), 0o755);
    for entry in std::fs::read_dir(tmp.path())? {
        let f = File::open(entry?.path())?;
        f.sync_all()?;
    }
    if dest.exists() {
        std::fs::remove_dir(dest).with_context(|| format!("replacing empty {}", dest.display()))?;
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, dest)
        .with_context(|| format!("renaming {} into {}", kept.display(), dest.display()))?;
    sync_dir(&dir);
    Ok(value)
}

/// Writes a set of files that belong together (a shard set): `fill` creates each one through
/// `create(k)` (from 1) as a temporary file beside `dir`'s final names and returns how many it
/// made; then every file is synced and only then renamed to `name(k, count)`, the last shards
/// first and the first shard last. An error or an interruption before the renames leaves no file
/// under a final name; one between renames leaves an incomplete set, which opening detects.
pub fn write_file_set<T>(
    dir: &Path,
    prefix: &str,
    name: impl Fn(u64, u64) -> String,
    fill: impl FnOnce(&mut dyn FnMut(u64) -> std::io::Result<BufWriter<File>>) -> Result<T>,
) -> Result<(T, Vec<PathBuf>)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut temps: Vec<tempfile::TempPath> = Vec::new();
    let value = {
        let mut create = |k: u64| -> std::io::Result<BufWriter<File>> {
            let tmp = tempfile::Builder::new()
                .prefix(&format!(".{prefix}.part{k}."))
                .suffix(".tmp")
                .tempfile_in(dir)?;
            let (file, path) = tmp.into_parts();
            temps.push(path);
            // Every shard stays open until the set's indexes are written: a small buffer each
            // (frames are written whole, past the buffer), so memory does not grow with the count.
            Ok(BufWriter::with_capacity(64 << 10, file))
        };
        fill(&mut create)?
    };
    for t in &temps {
        File::open(t)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", t.display()))?;
        set_mode(t, 0o644);
    }
    let count = temps.len() as u64;
    let finals: Vec<PathBuf> = (1..=count).map(|k| dir.join(name(k, count))).collect();
    for (t, dest) in temps.into_iter().zip(&finals).rev() {
        t.persist(dest)
            .with_context(|| format!("renaming into {}", dest.display()))?;
    }
    sync_dir(dir);
    Ok((value, finals))
}
