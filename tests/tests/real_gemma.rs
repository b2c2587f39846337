//! Gemma 3 270M, the real checkpoint (its Q4_K_M GGUF from PyPI, imported by `cllm
//! import-gguf`), held to Hugging Face transformers on the CPU: the reference figures in
//! `fixtures/reference/gemma3-270m/` were made by `scripts/reference/make_reference.py` from the
//! very folder this test imports (their weight-file hashes are checked first), so prompt ids,
//! greedy continuations and top-5 logits must agree as for the synthetic families
//! (`cllm_tests::reference::compare`).

use cllm_runtime::{Engine, OpenOptions};
use cllm_tests::reference::{check_files, compare, Reference, Tolerances};
use cllm_tests::root;

#[test]
fn gemma3_270m_matches_transformers_on_the_cpu() {
    let gguf = cllm_loader::pypi::ensure_gemma3_270m_gguf().expect("fetching Gemma 3 270M");
    let hf = cllm_tests::static_fixture_dir("gemma3-270m-reference").join("hf");
    if !hf.join("config.json").exists() {
        cllm_gguf::import(&gguf, &hf).expect("importing Gemma 3 270M");
    }
    let reference = Reference::load(&root().join("fixtures/reference/gemma3-270m/reference.json"));
    assert_eq!(reference.model_type, "gemma3_text");
    check_files(&hf, &reference)
        .expect("the imported folder is the one the reference was made from");
    let model = Engine::cpu().open(&hf, &OpenOptions::default()).unwrap();
    let report = compare(&model, &reference, &Tolerances::default());
    println!(
        "gemma3-270m: max relative logit error {:.3e}, {} teacher-forced steps\n{report}",
        report.max_rel_err(),
        report.forced_steps()
    );
    let failures = report.failures();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
