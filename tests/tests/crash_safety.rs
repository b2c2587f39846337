//! Crash-safe packing: `cllm pack` killed at random moments, and `cllm pack` on a full disk.
//!
//! - SIGKILL at 24 seeded random moments of a pack that takes 1-2 s: afterwards the destination is
//!   absent, or the previous good file byte for byte, or a complete container that verifies (and,
//!   packing being deterministic, equals an uninterrupted run's output). Never a partial file under
//!   the final name.
//! - A full disk, simulated with `RLIMIT_FSIZE` (set in the child before exec, with `SIGXFSZ`
//!   ignored so that the write fails with `EFBIG` instead of killing the process): a clear error,
//!   a non-zero exit, no partial or temporary file left behind, a previous good file untouched.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cllm_format::{verify, Container, Limits};
use cllm_tests::{cllm_bin, s, synth_model, Rng};

/// Slow enough to be killed in the middle (plain zstd at level 19 on f32 weights: ~1.5 s for the
/// "small" fixture on a 2-core machine), small enough to run 25 times.
const PACK_ARGS: [&str; 5] = ["--lossless", "zstd", "--zstd-level", "19", "--quiet"];

fn pack_cmd(model: &Path, out: &Path) -> Command {
    let mut c = Command::new(cllm_bin());
    c.arg("pack").arg(model).arg("-o").arg(out).args(PACK_ARGS);
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

/// Temporary files the packer left in `dir` (named `.NAME.XXXXXX.tmp` beside the destination).
fn leftovers(dir: &Path, dest_name: &str) -> Vec<PathBuf> {
    let prefix = format!(".{dest_name}.");
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .collect()
}

fn verifies(bytes: &[u8]) -> Result<(), String> {
    let c = Container::open(bytes, &Limits::default()).map_err(|e| e.to_string())?;
    let r = verify(&c, 64 << 20);
    if r.failures.is_empty() {
        Ok(())
    } else {
        Err(r.failures.join("; "))
    }
}

#[test]
fn sigkill_at_random_moments_never_leaves_a_partial_file() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let model = synth_model(tmp.path(), "small", cllm_format::Dtype::F32, 1, 7);
    println!("fixture written in {:?}", t0.elapsed());
    let previous_model = synth_model(tmp.path(), "tiny", cllm_format::Dtype::Bf16, 1, 8);
    let work = tmp.path().join("out");
    std::fs::create_dir(&work).unwrap();

    // An uninterrupted run: the reference output and how long packing takes.
    let reference_path = work.join("reference.cllm");
    let start = Instant::now();
    let out = pack_cmd(&model, &reference_path).output().unwrap();
    let full = start.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference = std::fs::read(&reference_path).unwrap();
    verifies(&reference).expect("the reference output verifies");
    std::fs::remove_file(&reference_path).unwrap();
    // A previous good file for half of the runs: a different model.
    let previous_path = work.join("previous.cllm");
    let out = Command::new(cllm_bin())
        .arg("pack")
        .arg(&previous_model)
        .arg("-o")
        .arg(&previous_path)
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let previous = std::fs::read(&previous_path).unwrap();
    assert_ne!(previous, reference);
    std::fs::remove_file(&previous_path).unwrap();

    println!("reference pack: {full:?}; setup done at {:?}", t0.elapsed());
    let mut rng = Rng::new(0xc1a5_4a11);
    let runs = 24;
    let (mut absent, mut kept, mut complete, mut temps) = (0, 0, 0, 0);
    let dest_name = "model.cllm";
    let dest = work.join(dest_name);
    for run in 0..runs {
        let had_previous = run % 2 == 1;
        if had_previous {
            std::fs::write(&dest, &previous).unwrap();
        }
        // Kill anywhere from the start to a little after the time an uninterrupted run needs.
        let at = Duration::from_micros(rng.next() % (full.as_micros() as u64 * 11 / 10).max(1));
        let mut child = pack_cmd(&model, &dest).spawn().unwrap();
        std::thread::sleep(at);
        let _ = child.kill(); // SIGKILL; fails only if the child already exited
        let status = child.wait().unwrap();
        match std::fs::read(&dest) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                assert!(
                    !had_previous,
                    "run {run}: the previous good file disappeared"
                );
                absent += 1;
            }
            Err(e) => panic!("run {run}: reading {}: {e}", dest.display()),
            Ok(bytes) if had_previous && bytes == previous => kept += 1,
            Ok(bytes) => {
                assert!(
                    bytes == reference,
                    "run {run}, killed at {at:?} ({status:?}): {} holds {} bytes that are neither the \
                     previous file nor a complete output ({}): {:?}",
                    dest.display(),
                    bytes.len(),
                    reference.len(),
                    verifies(&bytes)
                );
                verifies(&bytes).unwrap();
                complete += 1;
            }
        }
        // A killed packer cannot clean up after itself: its temporary file may remain, beside
        // the destination and under another name. Count them, then clear for the next run.
        for p in leftovers(&work, dest_name) {
            temps += 1;
            std::fs::remove_file(p).unwrap();
        }
        let _ = std::fs::remove_file(&dest);
    }
    println!(
        "SUMMARY crash safety: {runs} SIGKILLs over 0..{:?}: destination absent {absent}, previous file \
         intact {kept}, complete verified file {complete}, never partial; {temps} temporary files left \
         by killed runs",
        full * 11 / 10
    );
    println!("total {:?}", t0.elapsed());
    assert_eq!(absent + kept + complete, runs);
}

/// Runs `cllm pack` with the file-size limit `limit` (bytes), `SIGXFSZ` ignored.
fn pack_with_file_size_limit(model: &Path, dest: &Path, limit: u64) -> std::process::Output {
    let mut c = pack_cmd(model, dest);
    c.stdout(Stdio::piped());
    // SAFETY: only async-signal-safe calls (setrlimit, signal) between fork and exec.
    unsafe {
        c.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    c.output().unwrap()
}

#[test]
fn full_disk_gives_a_clear_error_and_leaves_nothing_partial() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synth_model(tmp.path(), "small", cllm_format::Dtype::F32, 1, 3);
    let work = tmp.path().join("out");
    std::fs::create_dir(&work).unwrap();
    let dest_name = "model.cllm";
    let dest = work.join(dest_name);
    for (limit, previous) in [
        (0u64, false),
        (1 << 20, false),
        (1 << 20, true),
        (4 << 20, true),
    ] {
        let good = b"a previous good file".to_vec();
        if previous {
            std::fs::write(&dest, &good).unwrap();
        }
        let out = pack_with_file_size_limit(&model, &dest, limit);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "packing with a {limit}-byte file limit succeeded?"
        );
        assert_eq!(
            out.status.code(),
            Some(2),
            "I/O errors exit with 2; got {:?}: {stderr}",
            out.status
        );
        assert!(
            stderr.contains("File too large") || stderr.to_lowercase().contains("no space"),
            "the error should say why the write failed: {stderr}"
        );
        if previous {
            assert_eq!(
                std::fs::read(&dest).unwrap(),
                good,
                "the previous file was touched"
            );
        } else {
            assert!(!dest.exists(), "a partial {} was left", dest.display());
        }
        assert!(
            leftovers(&work, dest_name).is_empty(),
            "temporary files left behind: {:?}",
            leftovers(&work, dest_name)
        );
        println!("file limit {limit}: {}", stderr.trim());
        let _ = std::fs::remove_file(&dest);
    }
}

#[test]
fn full_disk_error_names_the_destination() {
    // The error of a failed write should say which file could not be written. Today it names the
    // model folder being packed ("packing MODEL_DIR: write failed: File too large (os error 27):
    // File too large (os error 27)"), not the output, and repeats the OS error.
    let tmp = tempfile::tempdir().unwrap();
    let model = synth_model(tmp.path(), "tiny", cllm_format::Dtype::Bf16, 1, 3);
    let dest = tmp.path().join("written-here.cllm");
    let out = pack_with_file_size_limit(&model, &dest, 4096);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(s(&dest)),
        "the error does not name the destination {}: {stderr}",
        dest.display()
    );
    assert_eq!(
        stderr.matches("os error 27").count(),
        1,
        "the OS error is repeated: {stderr}"
    );
}
