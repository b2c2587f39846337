//! Tokenization and generation as Hugging Face transformers does them, through `cllm run` on
//! synthetic fixtures: a plain prompt gets the post-processor's special tokens (BOS where a
//! `TemplateProcessing` adds it) and a chat prompt does not get them twice; the chat template of
//! `chat_template.jinja` (transformers 5) is used, and carried through pack and unpack;
//! generation stops at `generation_config.json`'s EOS ids; `--logprobs K` reports the log-softmax
//! of the raw logits. `diff --run` tokenizes and stops as `cllm run` does.

use std::fs;
use std::path::{Path, PathBuf};

use cllm_format::Dtype;
use cllm_runtime::{Engine, OpenOptions, Tokenizer};
use cllm_synth::tokenizer::{BOS_ID, BOS_TOKEN, CHAT_TEMPLATE, IM_START_ID};
use cllm_tests::{cllm, cllm_ok, json_of, s, synth_model};
use serde_json::{json, Value};

fn fixture(tmp: &Path, seed: u64) -> PathBuf {
    synth_model(tmp, "tiny", Dtype::Bf16, 1, seed)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn write_json(path: &Path, v: &Value) {
    fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list of ids: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// `cllm run MODEL -p PROMPT --json` plus `extra`, parsed.
fn run_json(model: &Path, prompt: &str, extra: &[&str]) -> Value {
    let mut args = vec!["run", s(model), "-p", prompt, "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(cllm_ok(&args).trim()).unwrap()
}

/// Runs `cllm ARGS`, expecting a usage error (exit 2, no panic) whose message names `want`.
fn fails_naming(args: &[&str], want: &str) {
    let out = cllm(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(
        err.contains(want),
        "{args:?}: {err:?} does not name {want:?}"
    );
}

/// Gives the folder's `tokenizer.json` a Llama-style post-processor: BOS before the text.
fn add_bos_post_processor(dir: &Path) {
    let path = dir.join("tokenizer.json");
    let mut t = read_json(&path);
    let bos = |seq: &str| json!([{"SpecialToken": {"id": BOS_TOKEN, "type_id": 0}}, {"Sequence": {"id": seq, "type_id": 0}}]);
    let pair = {
        let mut p = bos("A").as_array().unwrap().clone();
        p.extend(bos("B").as_array().unwrap().iter().cloned());
        Value::Array(p)
    };
    t["post_processor"] = json!({
        "type": "TemplateProcessing",
        "single": bos("A"),
        "pair": pair,
        "special_tokens": {BOS_TOKEN: {"id": BOS_TOKEN, "ids": [BOS_ID], "tokens": [BOS_TOKEN]}},
    });
    write_json(&path, &t);
}

fn tokenizer(dir: &Path) -> Tokenizer {
    Tokenizer::from_file(dir.join("tokenizer.json")).unwrap()
}

#[test]
fn plain_prompts_get_the_post_processors_bos_and_chat_prompts_only_the_templates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture(tmp.path(), 1);
    let prompt = "the answer is";
    // The fixture's post-processor (ByteLevel) adds nothing: the ids are the text's alone.
    let plain = tokenizer(&dir).encode(prompt, false).unwrap();
    assert_ne!(plain[0], BOS_ID);
    assert_eq!(
        ids(&run_json(&dir, prompt, &["-n", "1"])["prompt_ids"]),
        plain
    );

    add_bos_post_processor(&dir);
    // A template that writes bos_token itself, as Llama's and Gemma's do.
    let cfg_path = dir.join("tokenizer_config.json");
    let mut cfg = read_json(&cfg_path);
    cfg["chat_template"] = json!(format!("{{{{ bos_token }}}}{CHAT_TEMPLATE}"));
    write_json(&cfg_path, &cfg);

    let v = run_json(&dir, prompt, &["-n", "1"]);
    let mut want = vec![BOS_ID];
    want.extend(&plain);
    assert_eq!(ids(&v["prompt_ids"]), want, "{v}");

    let chat = run_json(&dir, prompt, &["-n", "1", "--chat"]);
    let chat_ids = ids(&chat["prompt_ids"]);
    assert_eq!(&chat_ids[..2], [BOS_ID, IM_START_ID], "{chat}");
    assert_eq!(chat_ids.iter().filter(|&&i| i == BOS_ID).count(), 1);
    let rendered =
        format!("{BOS_TOKEN}<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!(chat_ids, tokenizer(&dir).encode(&rendered, false).unwrap());

    // diff --run encodes its prompts as `cllm run` does (BOS first here).
    let prompts = tmp.path().join("prompts.txt");
    fs::write(&prompts, format!("{prompt}\n")).unwrap();
    let out = cllm(&[
        "diff",
        s(&dir),
        s(&dir),
        "--run",
        "--json",
        "--no-builtin-prompts",
        "--prompts",
        s(&prompts),
        "--gen-tokens",
        "4",
        "--eval-windows",
        "0",
    ]);
    let d = json_of(&out);
    let greedy = &d["run"]["divergence"]["greedy"][0];
    assert_eq!(ids(&greedy["prompt"]), want, "{d}");
}

/// The ChatML template with a fixed system turn first, so its use shows in the ids.
const JINJA: &str = "<|im_start|>system\nfrom the jinja file<|im_end|>\n{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

fn jinja_render(prompt: &str) -> String {
    format!("<|im_start|>system\nfrom the jinja file<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
}

#[test]
fn chat_template_jinja_is_used_and_survives_pack_and_unpack() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture(tmp.path(), 2);
    let prompt = "hi";
    let want = tokenizer(&dir)
        .encode(&jinja_render(prompt), false)
        .unwrap();

    // Beside a template in tokenizer_config.json, the jinja file wins (as in transformers).
    fs::write(dir.join("chat_template.jinja"), JINJA).unwrap();
    let v = run_json(&dir, prompt, &["-n", "2", "--chat"]);
    assert_eq!(ids(&v["prompt_ids"]), want, "{v}");

    // transformers 5 writes it only there.
    let cfg_path = dir.join("tokenizer_config.json");
    let mut cfg = read_json(&cfg_path);
    cfg.as_object_mut().unwrap().remove("chat_template");
    write_json(&cfg_path, &cfg);
    let from_folder = run_json(&dir, prompt, &["-n", "2", "--chat"]);
    assert_eq!(ids(&from_folder["prompt_ids"]), want);

    // Packed, the container carries it; unpacked, the folder has it again, byte for byte.
    let container = tmp.path().join("m.cllm");
    cllm_ok(&["pack", s(&dir), "-o", s(&container), "--quiet"]);
    let from_container = run_json(&container, prompt, &["-n", "2", "--chat"]);
    assert_eq!(from_container["prompt_ids"], from_folder["prompt_ids"]);
    assert_eq!(
        from_container["generated_ids"],
        from_folder["generated_ids"]
    );
    let unpacked = tmp.path().join("unpacked");
    cllm_ok(&["unpack", s(&container), "-o", s(&unpacked), "--quiet"]);
    assert_eq!(
        fs::read(unpacked.join("chat_template.jinja")).unwrap(),
        JINJA.as_bytes()
    );
    let again = run_json(&unpacked, prompt, &["-n", "2", "--chat"]);
    assert_eq!(again["prompt_ids"], from_folder["prompt_ids"]);

    // Without either template, --chat fails naming both places; a plain prompt still runs.
    fs::remove_file(dir.join("chat_template.jinja")).unwrap();
    let args = ["run", s(&dir), "-p", prompt, "-n", "1", "--chat"];
    fails_naming(&args, "chat_template.jinja");
    fails_naming(&args, "tokenizer_config.json");
    run_json(&dir, prompt, &["-n", "1"]);

    // Only the jinja file, no tokenizer_config.json at all: still a chat.
    fs::remove_file(&cfg_path).unwrap();
    fs::write(dir.join("chat_template.jinja"), JINJA).unwrap();
    let v = run_json(&dir, prompt, &["-n", "1", "--chat"]);
    assert_eq!(ids(&v["prompt_ids"]), want);
    // A jinja file that is not UTF-8 is named.
    fs::write(dir.join("chat_template.jinja"), b"\xff\xfe{{ x }}").unwrap();
    fails_naming(
        &["run", s(&dir), "-p", prompt, "-n", "1", "--chat"],
        "chat_template.jinja",
    );

    // A container packed from a folder without the file (as every older one) reads and chats.
    let plain_dir = fixture(tmp.path(), 3);
    let plain = tmp.path().join("plain.cllm");
    cllm_ok(&["pack", s(&plain_dir), "-o", s(&plain), "--quiet"]);
    let v = run_json(&plain, prompt, &["-n", "1", "--chat"]);
    assert_eq!(ids(&v["prompt_ids"])[0], IM_START_ID, "{v}");
}

#[test]
fn generation_config_eos_ids_stop_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture(tmp.path(), 4);
    let prompt = "once upon a time";
    let free = ids(&run_json(&dir, prompt, &["-n", "12"])["generated_ids"]);
    assert_eq!(free.len(), 12, "the fixture's EOS was generated: {free:?}");
    // The first token that did not come before: generation must stop right after it.
    let (k, x) = free
        .iter()
        .enumerate()
        .skip(1)
        .find(|&(i, t)| !free[..i].contains(t))
        .map(|(i, &t)| (i, t))
        .expect("a new token after the first");
    // An id never generated here, listed first, so that x is the list's second id.
    let unused = (0..).find(|i| !free.contains(i)).unwrap();

    let gen_path = dir.join("generation_config.json");
    let gen = read_json(&gen_path);
    let with_eos = |eos: Value| {
        let mut g = gen.clone();
        match eos {
            Value::Null => {
                g.as_object_mut().unwrap().remove("eos_token_id");
            }
            e => g["eos_token_id"] = e,
        }
        write_json(&gen_path, &g);
    };

    with_eos(json!([unused, x]));
    let v = run_json(&dir, prompt, &["-n", "12"]);
    assert_eq!(ids(&v["generated_ids"]), free[..=k], "{v}");
    assert_eq!(v["stop"], format!("Eos({x})"));
    // The container stops the same way.
    let container = tmp.path().join("m.cllm");
    cllm_ok(&["pack", s(&dir), "-o", s(&container), "--quiet"]);
    let c = run_json(&container, prompt, &["-n", "12"]);
    assert_eq!(c["generated_ids"], v["generated_ids"]);
    // diff --run's greedy continuations stop there too.
    let prompts = tmp.path().join("prompts.txt");
    fs::write(&prompts, format!("{prompt}\n")).unwrap();
    let d = json_of(&cllm(&[
        "diff",
        s(&dir),
        s(&container),
        "--run",
        "--json",
        "--no-builtin-prompts",
        "--prompts",
        s(&prompts),
        "--gen-tokens",
        "12",
        "--eval-windows",
        "0",
    ]));
    let greedy = &d["run"]["divergence"]["greedy"][0];
    assert_eq!(ids(&greedy["reference"]), free[..=k], "{d}");

    // config.json's EOS applies only where generation_config.json names none.
    let cfg_path = dir.join("config.json");
    let mut cfg = read_json(&cfg_path);
    cfg["eos_token_id"] = json!(x);
    write_json(&cfg_path, &cfg);
    with_eos(json!([unused]));
    let v = run_json(&dir, prompt, &["-n", "12"]);
    assert_eq!(
        ids(&v["generated_ids"]),
        free,
        "generation_config.json overrides config.json"
    );
    with_eos(Value::Null);
    let v = run_json(&dir, prompt, &["-n", "12"]);
    assert_eq!(ids(&v["generated_ids"]), free[..=k], "config.json's EOS");

    // Invalid JSON, or a wrong type: a clear error naming the file.
    fs::write(&gen_path, "{\"eos_token_id\": [1, 2").unwrap();
    fails_naming(&["run", s(&dir), "-p", prompt], "generation_config.json");
    with_eos(json!("2"));
    fails_naming(&["run", s(&dir), "-p", prompt], "generation_config.json");
}

#[test]
fn logprobs_report_the_top_k_of_the_raw_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture(tmp.path(), 5);
    let prompt = "the answer is";
    let k = 5;
    let plain = run_json(&dir, prompt, &["-n", "6"]);
    assert!(plain.get("logprobs").is_none(), "only when asked: {plain}");
    let v = run_json(&dir, prompt, &["-n", "6", "--logprobs", "5"]);
    assert_eq!(v["generated_ids"], plain["generated_ids"], "same tokens");
    let generated = ids(&v["generated_ids"]);
    let steps = v["logprobs"].as_array().unwrap();
    let tok = tokenizer(&dir);
    assert_eq!(steps.len(), generated.len());
    for (pos, (step, &id)) in steps.iter().zip(&generated).enumerate() {
        assert_eq!(step["id"], id, "{pos}");
        let top = step["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), k, "{pos}");
        let lps: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(lps.windows(2).all(|w| w[0] >= w[1]), "{pos}: {lps:?}");
        assert!(lps.iter().all(|&lp| lp <= 0.0), "{pos}: {lps:?}");
        let mass: f64 = lps.iter().map(|lp| lp.exp()).sum();
        assert!(mass <= 1.0 + 1e-9, "{pos}: {mass}");
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["id"], id, "{pos}");
        assert_eq!(step["logprob"], top[0]["logprob"], "{pos}");
        // The vocabulary entry, null for the padded ids past the tokenizer's vocabulary.
        for t in top {
            let id = t["id"].as_u64().unwrap() as u32;
            assert_eq!(t["token"], json!(tok.id_to_token(id)), "{pos}: {t}");
        }
    }

    // The figures are the log-softmax of the logits the model gives, computed here apart.
    let model = Engine::cpu().open(&dir, &OpenOptions::default()).unwrap();
    let prompt_ids = ids(&v["prompt_ids"]);
    let mut session = model.session(prompt_ids.len() + 1).unwrap();
    let logits = session.prefill(&prompt_ids).unwrap();
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let lse = max
        + logits
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    for (t, &i) in steps[0]["top_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&order)
    {
        assert_eq!(t["id"], i);
        let lp = t["logprob"].as_f64().unwrap();
        assert!((lp - (logits[i] as f64 - lse)).abs() < 1e-9, "{t}");
    }

    // Sampling: the same tokens as without --logprobs, each with its own logprob (not
    // necessarily the top one's, never above it).
    let sampled = ["-n", "8", "--temperature", "1.5", "--seed", "7"];
    let a = run_json(&dir, prompt, &sampled);
    let mut with = sampled.to_vec();
    with.extend(["--logprobs", "20"]);
    let b = run_json(&dir, prompt, &with);
    assert_eq!(a["generated_ids"], b["generated_ids"]);
    for step in b["logprobs"].as_array().unwrap() {
        let top = step["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 20);
        let lp = step["logprob"].as_f64().unwrap();
        assert!(lp <= top[0]["logprob"].as_f64().unwrap());
        if let Some(t) = top.iter().find(|t| t["id"] == step["id"]) {
            assert_eq!(t["logprob"], step["logprob"]);
        }
    }

    // K out of range, or without --json: refused.
    for bad in ["0", "21"] {
        fails_naming(
            &["run", s(&dir), "-p", prompt, "--json", "--logprobs", bad],
            "--logprobs",
        );
    }
    let out = cllm(&["run", s(&dir), "-p", prompt, "--logprobs", "3"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--json"));
}
