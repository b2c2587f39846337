//! Shared helpers for the integration tests: the `cllm` binary, synthetic fixture folders, the
//! reference figures in `fixtures/reference`, and the real model (fetched on first use).

pub mod gguf_families;
pub mod reference;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `fixtures/reference/smollm2-135m`: figures from Hugging Face transformers for the real model
/// (`CLLM_REFERENCE_DIR` where set: a prebuilt test binary run from another checkout).
pub fn reference_dir() -> PathBuf {
    std::env::var_os("CLLM_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("fixtures/reference/smollm2-135m"))
}

/// The `cllm` binary: `CLLM_BIN` where set (a prebuilt one, as `scripts/gpu-tests.sh --bin-dir`
/// runs the tests on a machine without cargo), else the one of the same profile as this test,
/// built on first use.
pub fn cllm_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CLLM_BIN") {
            return PathBuf::from(p);
        }
        // Test executables live in target/<profile>/deps/.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "cllm", "--bin", "cllm"])
            .current_dir(root());
        if release {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("running cargo build for the cllm binary");
        assert!(status.success(), "building the cllm binary failed");
        profile_dir.join("cllm")
    })
    .clone()
}

/// A fresh directory for a fixture that a test binary keeps in a `static` for its whole run
/// (statics are never dropped, so a `TempDir` there would leave gigabytes behind every run):
/// `$TMPDIR/cllm-tests/NAME-PID`. Directories of the same NAME whose process has ended (no
/// `/proc/PID`) are removed first, so runs do not pile up, and concurrent runs do not collide.
pub fn static_fixture_dir(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join("cllm-tests");
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let file = e.file_name();
            let Some(pid) = file
                .to_str()
                .and_then(|f| f.strip_prefix(name))
                .and_then(|f| f.strip_prefix('-'))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = root.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a test fixture directory");
    dir
}

/// Runs `cllm ARGS` and returns its output.
pub fn cllm(args: &[&str]) -> Output {
    cllm_env(args, &[])
}

/// [`cllm`] with extra environment variables.
pub fn cllm_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(cllm_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("running cllm")
}

/// Runs `cllm ARGS`, asserts it succeeded, returns stdout.
pub fn cllm_ok(args: &[&str]) -> String {
    cllm_ok_env(args, &[])
}

/// [`cllm_ok`] with extra environment variables.
pub fn cllm_ok_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = cllm_env(args, env);
    assert!(
        out.status.success(),
        "cllm {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// `cllm verify --run` / `cllm diff --run` arguments for a short run: enough positions for exact
/// checks (zero KLD, a named tensor or layer), not for statistics.
pub const SHORT_RUN: &[&str] = &[
    "--gen-tokens",
    "8",
    "--eval-windows",
    "1",
    "--window-tokens",
    "64",
];

/// Runs `cllm ARGS`, asserts the exit code, returns stdout as JSON.
pub fn cllm_json(args: &[&str], code: i32) -> serde_json::Value {
    let out = cllm(args);
    let v = json_of(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "cllm {args:?}: failures {}\nstderr: {}",
        v["failures"],
        String::from_utf8_lossy(&out.stderr)
    );
    v
}

/// A command's stdout as JSON; panics with its stdout and stderr where it is not JSON.
pub fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Writes a synthetic fixture model into `dir/name` and returns its path.
pub fn synth_model(
    dir: &Path,
    shape: &str,
    dtype: cllm_format::Dtype,
    shards: usize,
    seed: u64,
) -> PathBuf {
    let out = dir.join(format!("{shape}-{}-{shards}-{seed}", dtype.name()));
    let sh = cllm_synth::shape(shape).unwrap_or_else(|| panic!("no fixture shape {shape}"));
    let opts = cllm_synth::SynthOptions {
        dtype,
        seed,
        shards,
        ..cllm_synth::SynthOptions::default()
    };
    cllm_synth::write_model(&sh, &opts, &out).expect("writing fixture model");
    out
}

/// Copies the Hugging Face folder `src` to `dst`, reversing the rows of `tensor` in its
/// safetensors file: a model broken in one known tensor, for the divergence tests.
pub fn permute_rows(src: &Path, dst: &Path, tensor: &str) {
    std::fs::create_dir_all(dst).unwrap();
    let mut found = false;
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_owned();
        let mut bytes = std::fs::read(&path).unwrap();
        if path.extension().is_some_and(|e| e == "safetensors") {
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
            if let Some(t) = header.get(tensor) {
                let offsets: Vec<usize> = t["data_offsets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as usize)
                    .collect();
                let shape: Vec<usize> = t["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as usize)
                    .collect();
                let data = &mut bytes[8 + n + offsets[0]..8 + n + offsets[1]];
                let row_bytes = data.len() / shape[0];
                let rows: Vec<Vec<u8>> = data.chunks(row_bytes).map(<[u8]>::to_vec).collect();
                for (dst_row, src_row) in data.chunks_mut(row_bytes).zip(rows.iter().rev()) {
                    dst_row.copy_from_slice(src_row);
                }
                found = true;
            }
        }
        std::fs::write(dst.join(name), bytes).unwrap();
    }
    assert!(found, "{tensor} not found in {}", src.display());
}

/// A path as a `&str` for command lines.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The tests' seeded randomness: SplitMix64 (the fixture generator's), with the draws tests need.
pub struct Rng(cllm_synth::rng::SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(cllm_synth::rng::SplitMix64::new(seed))
    }

    pub fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (modulo bias is irrelevant for test inputs).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `[-0.5, 0.5)`.
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// Runs one case of the calling test binary in a child process: the binary re-executes its own
/// `child` test with `case_env=case`, and that test (see [`limit_memory`]) runs the case under an
/// address-space limit. Returns the lines the child printed after `RESULT `; panics (failing the
/// calling test) when the child does not exit normally, as an allocation past the limit does.
pub fn in_child(case_env: &str, case: &str, memory_limit: u64) -> Vec<String> {
    use std::os::unix::process::ExitStatusExt;
    let exe = std::env::current_exe().expect("path of the test binary");
    let out = Command::new(exe)
        .args([
            "child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "--quiet",
        ])
        .env(case_env, case)
        .output()
        .expect("re-executing the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        panic!(
            "case {case}: child process failed ({}{})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            match out.status.code() {
                Some(c) => format!("exit code {c}"),
                None => String::new(),
            },
            match out.status.signal() {
                Some(s) => format!(
                    "killed by signal {s}: an abort is typically an allocation over the {} MiB limit",
                    memory_limit >> 20
                ),
                None => String::new(),
            }
        );
    }
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(String::from)
        .collect()
}

/// Limits this process's address space to `bytes` (and turns off core dumps): the child side of
/// [`in_child`].
pub fn limit_memory(bytes: u64) {
    let lim = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on this process's own limits, with valid pointers.
    unsafe {
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_AS, &lim),
            0,
            "setrlimit(RLIMIT_AS)"
        );
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
    }
}
