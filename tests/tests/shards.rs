//! Shard sets (spec/FORMAT.md section 6) as users meet them through `cllm`:
//!
//! - a pack cut by `--max-shard-size` keeps every file within the size, each shard verifies
//!   alone, and the set reads (by any shard or by a pattern) as exactly the model a single-file
//!   pack holds: same tensors, same unpacked bytes, same generated tokens and logits;
//! - a missing, extra, renamed, truncated, corrupted or mixed-in shard is an error (exit 1) that
//!   names the file, in the Rust reader and in the spec's Python reader;
//! - a pack killed at random moments leaves no shard under a final name unless the set is
//!   complete, and a pack that fails leaves nothing at all.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cllm_format::{verify, Container, Dtype, Limits};
use cllm_tests::{cllm, cllm_bin, cllm_ok, json_of, root, s, synth_model, Rng};

/// Shards of the "small" fixture at this size: several, each holding a few tensors.
const MAX: &str = "1MB";
const MAX_BYTES: u64 = 1_000_000;

fn shard_files(dir: &Path, stem: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(cllm_format::shard::parse_shard_file_name)
                .is_some_and(|(st, _, _)| st == stem)
        })
        .collect();
    v.sort();
    v
}

fn pack_set(model: &Path, out: &Path, extra: &[&str]) -> Vec<PathBuf> {
    let mut args = vec![
        "pack",
        s(model),
        "-o",
        s(out),
        "--quiet",
        "--max-shard-size",
        MAX,
    ];
    args.extend(extra);
    cllm_ok(&args);
    let stem = out.file_stem().unwrap().to_str().unwrap();
    shard_files(out.parent().unwrap(), stem)
}

fn stderr(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The tensor data of an unpacked folder's safetensors file, without its header (whose metadata
/// names the container's format version).
fn unpacked_data(dir: &Path) -> (serde_json::Value, Vec<u8>) {
    let b = std::fs::read(dir.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    header.as_object_mut().unwrap().remove("__metadata__");
    (header, b[8 + n..].to_vec())
}

fn python_reader(args: &[&str]) -> Output {
    Command::new("python3")
        .arg(root().join("spec/cllm_reader.py"))
        .args(args)
        .output()
        .expect("python3 runs")
}

#[test]
fn a_shard_set_reads_as_the_single_file_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synth_model(tmp.path(), "small", Dtype::Bf16, 1, 3);
    for policy in [
        &["--policy", "lossless"][..],
        &["--policy", "mlp-only", "--quant", "int4"],
    ] {
        let single = tmp.path().join("single.cllm");
        let mut args = vec!["pack", s(&model), "-o", s(&single), "--quiet"];
        args.extend(policy);
        cllm_ok(&args);
        let set_dir = tmp.path().join(format!("set{}", policy.len()));
        std::fs::create_dir(&set_dir).unwrap();
        let shards = pack_set(&model, &set_dir.join("m.cllm"), policy);
        assert!(shards.len() >= 3, "{} shards: {shards:?}", shards.len());
        let n = shards.len();
        for (k, p) in shards.iter().enumerate() {
            let name = p.file_name().unwrap().to_str().unwrap();
            assert_eq!(name, format!("m-{:05}-of-{n:05}.cllm", k + 1));
            let bytes = std::fs::read(p).unwrap();
            assert!(
                bytes.len() as u64 <= MAX_BYTES,
                "{name}: {} bytes",
                bytes.len()
            );
            // Each shard is a container that verifies alone.
            let c = Container::open(&bytes, &Limits::default()).unwrap();
            assert_eq!(c.framing.minor, 2, "{name}");
            let set = c.index.set.as_ref().expect("a set record");
            assert_eq!((set.shard, set.count), (k as u64 + 1, n as u64));
            let r = verify(&c, 1 << 20);
            assert!(r.failures.is_empty(), "{name}: {:?}", r.failures);
            assert!(c.read_file("config.json").unwrap().is_some(), "{name}");
            assert_eq!(c.read_file("tokenizer.json").unwrap().is_some(), k == 0);
        }

        // The set by its first shard, a middle shard and a pattern: the same tensors as the
        // single file, and `verify --against` the source holds.
        let single_json = json_of(&cllm(&["inspect", s(&single), "--json"]));
        let pattern = set_dir.join("m-*.cllm");
        for name in [s(&shards[0]), s(&shards[n / 2]), s(&pattern)] {
            let j = json_of(&cllm(&["inspect", name, "--json"]));
            assert_eq!(j["tensors"], single_json["tensors"], "{name}");
            assert_eq!(j["shards"].as_array().unwrap().len(), n);
            let out = cllm(&["verify", name, "--against", s(&model)]);
            assert!(out.status.success(), "{name}: {}", stderr(&out));
        }

        // Unpacked: the same tensor bytes.
        let un_single = tmp.path().join(format!("un-single{}", policy.len()));
        let un_set = tmp.path().join(format!("un-set{}", policy.len()));
        cllm_ok(&["unpack", s(&single), "-o", s(&un_single), "--quiet"]);
        cllm_ok(&["unpack", s(&shards[n - 1]), "-o", s(&un_set), "--quiet"]);
        assert_eq!(unpacked_data(&un_single), unpacked_data(&un_set));

        // Run: the same tokens and the same log-probabilities, bit for bit.
        let run = |p: &Path| {
            json_of(&cllm(&[
                "run",
                s(p),
                "-p",
                "The set",
                "-n",
                "6",
                "--json",
                "--logprobs",
                "3",
            ]))
        };
        let (a, b) = (run(&single), run(&shards[0]));
        assert_eq!(a["generated_ids"], b["generated_ids"]);
        assert_eq!(a["logprobs"], b["logprobs"]);

        // The spec's Python reader: the same tensors, the same hashes.
        let py_single = python_reader(&[s(&single), "--json"]);
        let py_set = python_reader(&[s(&shards[1]), "--json"]);
        assert!(py_set.status.success(), "{}", stderr(&py_set));
        assert_eq!(py_single.stdout, py_set.stdout);
        let py_verify = python_reader(&[s(&pattern), "--verify"]);
        assert!(py_verify.status.success(), "{}", stderr(&py_verify));
        std::fs::remove_file(&single).unwrap();
    }
}

/// A fresh copy of a packed set in its own directory.
fn copy_set(shards: &[PathBuf], dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    shards
        .iter()
        .map(|p| {
            let to = dir.join(p.file_name().unwrap());
            std::fs::copy(p, &to).unwrap();
            to
        })
        .collect()
}

#[test]
fn broken_sets_are_refused_naming_the_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synth_model(tmp.path(), "small", Dtype::Bf16, 1, 4);
    let other_model = synth_model(tmp.path(), "small", Dtype::Bf16, 1, 5);
    let good = pack_set(&model, &tmp.path().join("good/m.cllm"), &[]);
    let other = pack_set(&other_model, &tmp.path().join("other/m.cllm"), &[]);
    let n = good.len();
    assert!(n >= 3 && other.len() == n, "{n} and {} shards", other.len());
    let name = |k: usize| format!("m-{:05}-of-{n:05}.cllm", k);

    type Break = Box<dyn Fn(&[PathBuf], &Path)>;
    let cases: Vec<(&str, Break, String)> = vec![
        (
            "missing",
            Box::new(|set: &[PathBuf], _: &Path| std::fs::remove_file(&set[1]).unwrap()),
            name(2),
        ),
        (
            "extra",
            Box::new(move |set: &[PathBuf], dir: &Path| {
                std::fs::copy(&set[0], dir.join(format!("m-{:05}-of-{n:05}.cllm", n + 1))).unwrap();
            }),
            name(n + 1),
        ),
        (
            "reordered",
            Box::new(|set: &[PathBuf], dir: &Path| {
                let t = dir.join("swap");
                std::fs::rename(&set[1], &t).unwrap();
                std::fs::rename(&set[2], &set[1]).unwrap();
                std::fs::rename(&t, &set[2]).unwrap();
            }),
            name(2),
        ),
        (
            "truncated",
            Box::new(|set: &[PathBuf], _: &Path| {
                let b = std::fs::read(&set[2]).unwrap();
                std::fs::write(&set[2], &b[..b.len() - 100]).unwrap();
            }),
            name(3),
        ),
        (
            "mixed-in",
            Box::new({
                let other = other.clone();
                move |set: &[PathBuf], _: &Path| {
                    std::fs::copy(&other[1], &set[1]).unwrap();
                }
            }),
            name(2),
        ),
        (
            "corrupted frame",
            Box::new(|set: &[PathBuf], _: &Path| {
                let mut b = std::fs::read(&set[1]).unwrap();
                b[4096] ^= 0x10;
                std::fs::write(&set[1], &b).unwrap();
            }),
            name(2),
        ),
    ];
    for (i, (what, brk, named)) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("case{i}"));
        let set = copy_set(&good, &dir);
        brk(&set, &dir);
        let first = dir.join(name(1));
        let out = cllm(&["verify", s(&first)]);
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {text}");
        assert!(
            text.contains(named),
            "{what}: the message names {named}: {text}"
        );
        // The same set opened for running: refused too, before any weight is used.
        let out = cllm(&["run", s(&first), "-p", "x", "-n", "1"]);
        assert!(!out.status.success(), "{what}: run accepted a broken set");
        // The spec's reader sees it too (a corrupted frame when it decodes, the rest on open).
        let py = python_reader(&[s(&first), "--verify"]);
        let py_text = stderr(&py);
        assert!(
            !py.status.success(),
            "{what}: the Python reader accepted it"
        );
        assert!(
            py_text.contains(named),
            "{what}: Python names {named}: {py_text}"
        );
    }
    // A pattern that matches two sets' shards (the good set and one of another pack).
    let dir = tmp.path().join("two");
    copy_set(&good, &dir);
    std::fs::copy(&other[0], dir.join("x-00001-of-00009.cllm")).unwrap();
    let out = cllm(&["verify", s(&dir.join("*.cllm"))]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("x-00001-of-00009.cllm"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_tensor_larger_than_a_shard_is_refused_and_nothing_is_left() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synth_model(tmp.path(), "small", Dtype::Bf16, 1, 6);
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = cllm(&[
        "pack",
        s(&model),
        "-o",
        s(&out_dir.join("m.cllm")),
        "--quiet",
        "--max-shard-size",
        "300KB",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // The embedding (2048 x 256 bf16, about 0.7 MB stored) cannot fit.
    assert!(
        stderr(&out).contains("model.embed_tokens.weight")
            && stderr(&out).contains("--max-shard-size"),
        "{}",
        stderr(&out)
    );
    let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn sigkill_during_a_sharded_pack_never_leaves_a_partial_set() {
    let tmp = tempfile::tempdir().unwrap();
    // f32 weights and zstd level 19: slow enough to be killed in the middle.
    let model = synth_model(tmp.path(), "small", Dtype::F32, 1, 7);
    let args = |out: &Path| -> Vec<String> {
        [
            "pack",
            s(&model),
            "-o",
            s(out),
            "--quiet",
            "--lossless",
            "zstd",
            "--zstd-level",
            "19",
            "--max-shard-size",
            "3MB",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let reference_dir = tmp.path().join("reference");
    std::fs::create_dir(&reference_dir).unwrap();
    let start = Instant::now();
    let o = Command::new(cllm_bin())
        .args(args(&reference_dir.join("m.cllm")))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let full = start.elapsed();
    let reference: Vec<Vec<u8>> = shard_files(&reference_dir, "m")
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(reference.len() >= 3, "{} shards", reference.len());

    let mut rng = Rng::new(0x5a4d_5e75);
    let (mut none, mut complete) = (0, 0);
    let work = tmp.path().join("work");
    for run in 0..12 {
        std::fs::create_dir_all(&work).unwrap();
        let at = Duration::from_micros(rng.next() % (full.as_micros() as u64 * 11 / 10).max(1));
        let mut child = Command::new(cllm_bin())
            .args(args(&work.join("m.cllm")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        let _ = child.kill();
        child.wait().unwrap();
        let finals = shard_files(&work, "m");
        if finals.is_empty() {
            none += 1;
        } else {
            let got: Vec<Vec<u8>> = finals.iter().map(|p| std::fs::read(p).unwrap()).collect();
            assert!(
                got == reference,
                "run {run}, killed at {at:?}: {} shards under final names that are not the \
                 complete set",
                finals.len()
            );
            complete += 1;
        }
        std::fs::remove_dir_all(&work).unwrap();
    }
    println!("SUMMARY sharded crash safety: 12 SIGKILLs over 0..{full:?}: no shard {none}, complete set {complete}");
}
