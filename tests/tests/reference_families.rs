//! Every synthetic family fixture held to Hugging Face transformers on the CPU: for each
//! `fixtures/reference/<dir>/reference.json` made from a `cllm synth` folder
//! (`scripts/reference/regenerate.sh`), the test rebuilds exactly that folder (same shape, dtype,
//! seed and shards; its weight files' SHA-256 must match the recorded ones), opens it with the
//! engine and compares tokenization, greedy continuations and top-5 logits
//! (`cllm_tests::reference::compare`; the rules are there). Greedy steps where transformers' own
//! top-1/top-2 gap is below 1e-4 are teacher-forced and printed.

use cllm_format::Dtype;
use cllm_model::Family;
use cllm_runtime::{Engine, OpenOptions};
use cllm_tests::reference::{check_files, compare, reference_files, Reference, Tolerances};
use cllm_tests::{root, synth_model};

#[test]
fn synthetic_families_match_transformers_on_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = root().join("fixtures/reference");
    let mut shapes = Vec::new();
    let mut failures = Vec::new();
    for path in reference_files(&dir) {
        let reference = Reference::load(&path);
        let Some(synth) = reference.synth.clone() else {
            continue; // a real checkpoint: its own test
        };
        let label = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        shapes.push(synth.shape.clone());
        if cllm_synth::shape(&synth.shape).is_none() {
            failures.push(format!("{label}: cllm synth has no shape {}", synth.shape));
            continue;
        }
        let dtype = Dtype::from_safetensors(&synth.dtype.to_uppercase())
            .unwrap_or_else(|| panic!("{label}: dtype {}", synth.dtype));
        let folder = synth_model(tmp.path(), &synth.shape, dtype, synth.shards, synth.seed);
        if let Err(e) = check_files(&folder, &reference) {
            failures.push(format!(
                "{label}: the fixture is not the folder the reference was made from ({e}); rerun scripts/reference/regenerate.sh"
            ));
            continue;
        }
        let model = match Engine::cpu().open(&folder, &OpenOptions::default()) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{label}: the CPU engine cannot open it: {e}"));
                continue;
            }
        };
        assert_eq!(
            Some(model.config().family),
            Family::from_model_type(&reference.model_type),
            "{label}"
        );
        let report = compare(&model, &reference, &Tolerances::default());
        println!(
            "{label} ({}, seed {}, transformers {}): max relative logit error {:.3e}, {} teacher-forced steps\n{report}",
            reference.model_type,
            synth.seed,
            reference.generator["transformers"],
            report.max_rel_err(),
            report.forced_steps(),
        );
        failures.extend(
            report
                .failures()
                .into_iter()
                .map(|f| format!("{label}: {f}")),
        );
    }
    for want in [
        "tiny",
        "tiny-qwen2",
        "tiny-mistral",
        "tiny-qwen3",
        "tiny-gemma3",
        "tiny-phi3",
    ] {
        assert!(
            shapes.iter().any(|s| s == want),
            "no reference for shape {want} under {}",
            dir.display()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The comparison fails what it should and forgives only near-ties: a reference with one
/// continuation token, one logit, one prompt id and one top-5 order changed, against the
/// unchanged fixture.
#[test]
fn the_comparison_catches_changed_figures_and_forgives_near_ties() {
    let tmp = tempfile::tempdir().unwrap();
    let path = root().join("fixtures/reference/synth-tiny/reference.json");
    let reference = Reference::load(&path);
    let synth = reference.synth.clone().unwrap();
    let dtype = Dtype::from_safetensors(&synth.dtype.to_uppercase()).unwrap();
    let folder = synth_model(tmp.path(), &synth.shape, dtype, synth.shards, synth.seed);
    let model = Engine::cpu()
        .open(&folder, &OpenOptions::default())
        .unwrap();
    let tol = Tolerances::default();
    assert!(compare(&model, &reference, &tol).passed());

    let n = reference.prompts[0].prompt_ids.len();
    let with = |f: &dyn Fn(&mut Reference)| {
        let mut r = reference.clone();
        r.prompts.truncate(1);
        f(&mut r);
        compare(&model, &r, &tol)
    };
    // The reference's runner-up as its greedy token at `step`.
    let other = |r: &mut Reference, step: usize| {
        let p = &mut r.prompts[0];
        p.continuation[step] = p.top_ids[n + step - 1][1];
    };

    // Another greedy token where transformers' gap is wide: a failure.
    let report = with(&|r| other(r, 5));
    assert!(!report.passed(), "{report}");
    assert!(
        report
            .failures()
            .iter()
            .any(|f| f.contains("greedy step 5:")),
        "{report}"
    );

    // The same where the gap is a tie (at the last step, so that the rest of the reference
    // still follows): teacher-forced, reported, no greedy failure.
    let last = reference.new_tokens - 1;
    let report = with(&|r| {
        other(r, last);
        r.prompts[0].gaps[n + last - 1] = 5e-5;
    });
    let p = &report.prompts[0];
    assert_eq!(p.greedy_matched, last, "{report}");
    assert_eq!(p.forced.len(), 1, "{report}");
    assert_eq!(p.forced[0].step, last);
    assert!(
        !p.failures.iter().any(|f| f.contains("greedy step")),
        "{report}"
    );

    // One logit off by 2e-3 relative: a failure naming it.
    let report = with(&|r| {
        let v = &mut r.prompts[0].top_logits[3][2];
        *v += 2e-3 * v.abs().max(1e-2);
    });
    assert!(!report.passed());
    assert!(
        report
            .failures()
            .iter()
            .any(|f| f.contains("position 3 id")),
        "{report}"
    );
    assert!(report.max_rel_err() > 1e-3);

    // Two top ids swapped: a failure, unless their logits are within the tie gap.
    let swap = |r: &mut Reference| r.prompts[0].top_ids[7].swap(1, 2);
    let report = with(&swap);
    assert!(
        report
            .failures()
            .iter()
            .any(|f| f.contains("position 7: top-5 ids")),
        "{report}"
    );

    // A prompt id changed: a failure.
    let report = with(&|r| r.prompts[0].prompt_ids[0] += 1);
    assert!(
        report.failures().iter().any(|f| f.contains("prompt ids")),
        "{report}"
    );
}
