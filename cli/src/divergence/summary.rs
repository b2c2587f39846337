//! The terminal summary of a divergence run, readable in ten seconds: verdict first, then the
//! headline figures, the layers and tensors that add the most error, and the first divergent
//! greedy token with both continuations.

use std::path::Path;

use cllm_runtime::divergence::{RunOutcome, WeightDiff};

/// How many layers and tensors the summary names.
const WORST: usize = 5;

/// A continuation on one line: escaped, and cut to `max` characters.
pub fn one_line(s: &str, max: usize) -> String {
    let e: String = s.escape_debug().collect();
    if e.chars().count() > max {
        let cut: String = e.chars().take(max).collect();
        format!("\"{cut}\"...")
    } else {
        format!("\"{e}\"")
    }
}

/// A figure with enough digits whatever its size.
pub fn fig(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if !v.is_finite() {
        format!("{v}")
    } else if v.abs() >= 0.01 {
        format!("{v:.4}")
    } else {
        format!("{v:.3e}")
    }
}

/// The device, with the GPU's name when there is one.
pub fn device(o: &RunOutcome) -> String {
    match &o.gpu {
        Some(name) => format!("{} ({name})", o.device),
        None => o.device.clone(),
    }
}

pub fn print_run(o: &RunOutcome) {
    let r = &o.divergence;
    println!(
        "cllm divergence: {} against {} (reference) on {}: {} prompts x {} tokens + {} windows x {} tokens of {}, {} scored positions, {:.1} s",
        o.test,
        o.reference,
        device(o),
        r.prompts.streams,
        o.gen_tokens,
        r.eval.streams,
        o.window_tokens,
        o.eval_text,
        r.positions,
        o.seconds
    );
    if o.ok {
        let mut held = Vec::new();
        if let Some(k) = o.criteria.max_kld {
            held.push(format!("mean KLD <= {k}"));
        }
        if let Some(t) = o.criteria.min_top1 {
            held.push(format!("top-1 >= {t}"));
        }
        if o.lossless.logits_must_be_identical {
            held.push("bit-identical logits".into());
        }
        held.push("KV cache parity".into());
        println!("verdict: PASS ({})", held.join(", "));
    } else {
        println!("verdict: FAIL");
        for f in &o.failures {
            println!("  FAIL {f}");
        }
    }
    println!(
        "KLD       mean {}  p50 {}  p90 {}  p99 {}  max {}  (nats)",
        fig(r.kld.mean),
        fig(r.kld.p50),
        fig(r.kld.p90),
        fig(r.kld.p99),
        fig(r.kld.max)
    );
    println!(
        "          every position, context included: mean KLD {}, top-1 {:.2}% ({} positions)",
        fig(r.every_position.mean_kld),
        100.0 * r.every_position.top1_agreement,
        r.every_position.positions
    );
    println!(
        "top-1     {:.2}% agree   RMS dp {}   PPL {:.4} -> {:.4} (ratio {:.4}; eval text {:.4} -> {:.4})",
        100.0 * r.top1_agreement,
        fig(r.rms_dp),
        r.ppl_reference,
        r.ppl_test,
        r.ppl_ratio,
        r.eval.ppl_reference,
        r.eval.ppl_test
    );
    let need = if o.lossless.logits_must_be_identical {
        "both lossless: required"
    } else {
        "not both lossless: not required"
    };
    if r.logits.identical {
        println!(
            "logits    bit-identical at all {} positions ({need})",
            r.logits.positions
        );
    } else {
        println!(
            "logits    differ at {} of {} positions, max |dlogit| {} ({need})",
            r.logits.positions_differing,
            r.logits.positions,
            fig(r.logits.max_abs_diff)
        );
    }
    let kv = &r.kv_cache;
    let kv_side = |p: &cllm_runtime::divergence::KvParity| {
        if p.identical {
            format!("identical at {} positions", p.positions)
        } else {
            format!(
                "DIFFERS at {} of {} positions, max |d| {}",
                p.positions_differing,
                p.positions,
                fig(p.max_abs_diff)
            )
        }
    };
    println!(
        "KV cache  {} (reference) / {} (test); decode vs recompute: reference {}; test {}",
        o.kv_cache.reference,
        o.kv_cache.test,
        kv_side(&kv.reference),
        kv_side(&kv.test)
    );

    match r.first_divergent_layer {
        None if r.layers.is_empty() => println!("layers    the backends gave no per-layer traces"),
        None => println!("layers    every layer's output matches the reference exactly"),
        Some(first) => {
            // Without per-tensor attribution the first departing layer is the best lead (error
            // grows downstream, so a later layer can add more), and the weights say what in it
            // changed.
            let lead = match o.weights.most_changed_in_layer(first) {
                Some(w) if !r.tensor_attribution => {
                    format!(", where {} changed most ({})", w.name, fig(w.rel_rms))
                }
                _ => String::new(),
            };
            println!("worst layers (error each adds to the hidden state); first layer that departs: {first}{lead}");
            for l in r
                .worst_layers(WORST)
                .into_iter()
                .filter(|l| l.growth.is_nan() || l.growth > 0.0)
            {
                let worst = if r.tensor_attribution {
                    match (l.worst_tensor.as_deref(), l.worst_own_rel_err) {
                        (Some(t), Some(e)) if e != 0.0 => {
                            format!("worst tensor {t} ({})", fig(e))
                        }
                        _ => "none of its tensors differs".into(),
                    }
                } else {
                    // No tensor's own error on this backend: say which weight changed instead.
                    match o.weights.most_changed_in_layer(l.layer) {
                        Some(w) => format!("weight most changed {} ({})", w.name, fig(w.rel_rms)),
                        None => "its weights equal the reference's".into(),
                    }
                };
                println!(
                    "  layer {:>3}  +{:<10} rel err {:<10} cos {:.6}  {worst}",
                    l.layer,
                    fig(l.growth),
                    fig(l.figures.rel_err),
                    l.figures.cosine,
                );
            }
        }
    }
    let worst: Vec<_> = r
        .worst_tensors(WORST)
        .iter()
        .filter(|t| t.rank_err() != 0.0)
        .collect();
    if !r.tensor_attribution {
        println!(
            "tensors   per-tensor attribution not measured on {} (it traces each layer's output only); --device cpu names the tensor",
            o.device
        );
    } else if r.tensors.is_empty() {
        println!("tensors   the backends gave no per-tensor traces");
    } else if worst.is_empty() {
        println!("tensors   every tensor's output matches the reference exactly");
    } else {
        println!("worst tensors (own: on the reference's input; in-model: with upstream error):");
    }
    for t in worst {
        let w = o
            .weights
            .get(&t.tensor)
            .map_or("-".into(), |w| fig(w.rel_rms));
        let name = if t.module == "lm_head" {
            format!("{} (as LM head)", t.tensor)
        } else {
            t.tensor.clone()
        };
        println!(
            "  {:<48} own {:<10} in-model {:<10} weight {}",
            name,
            t.own.as_ref().map_or("-".into(), |f| fig(f.rel_err)),
            fig(t.in_model.rel_err),
            w
        );
    }

    let diverged: Vec<_> = o
        .greedy_text
        .iter()
        .enumerate()
        .filter(|(_, g)| g.first_divergence.is_some())
        .collect();
    if o.greedy_text.is_empty() {
        println!("greedy    no prompts");
    } else if diverged.is_empty() {
        println!(
            "greedy    identical continuations for all {} prompts",
            o.greedy_text.len()
        );
    } else {
        let (i, g) = diverged
            .iter()
            .min_by_key(|(i, g)| (g.first_divergence, *i))
            .copied()
            .expect("non-empty");
        println!(
            "greedy    {} of {} prompts diverge; earliest: prompt {i} at generated token {}",
            diverged.len(),
            o.greedy_text.len(),
            g.first_divergence.unwrap_or(0)
        );
        println!("  prompt:    {}", one_line(&g.prompt, 90));
        println!("  shared:    {}", one_line(&g.shared, 90));
        println!("  reference: {}", one_line(&g.reference, 90));
        println!("  test:      {}", one_line(&g.test, 90));
    }
}

/// `cllm diff` without `--run`: the weights only.
pub fn print_weights(a: &Path, b: &Path, d: &WeightDiff) {
    println!(
        "cllm diff: {} against {}: {} tensors compared, {} identical",
        b.display(),
        a.display(),
        d.compared,
        d.identical
    );
    for f in d.structure_failures().iter().take(20) {
        println!("  FAIL {f}");
    }
    let differing: Vec<_> = d.tensors.iter().filter(|t| !t.identical).collect();
    if differing.is_empty() {
        println!("every common tensor is identical");
        return;
    }
    println!(
        "{:<52} {:>10} {:>10} {:>10}",
        "tensor (largest difference first)", "rel RMS", "max abs", "cosine"
    );
    for t in differing.iter().take(10) {
        println!(
            "{:<52} {:>10} {:>10} {:>10.6}",
            t.name,
            fig(t.rel_rms),
            fig(t.max_abs),
            t.cosine
        );
    }
    if differing.len() > 10 {
        println!("... {} more (--json lists all)", differing.len() - 10);
    }
    println!("(--run compares the models' outputs)");
}
