//! The `--report FILE.html` page: one self-contained file (inline CSS and SVG, no script, nothing
//! fetched), written as XHTML-compatible markup (every element closed, every attribute quoted) so
//! that any XML parser can check it. Figures sit in `data-key`/`data-value` attributes at full
//! precision, beside their rounded display.

use std::fmt::Write;

use super::summary::fig;
use cllm_runtime::divergence::RunOutcome;

/// Escapes text and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            // Control characters are not allowed in XML; show them as escapes.
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {
                let _ = write!(o, "\\u{{{:x}}}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

/// One line series of a chart.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    values: Vec<f64>,
}

/// A line chart of `series` over x = 0..n, linear axes, as inline SVG.
fn line_chart(title: &str, x_label: &str, series: &[Series<'_>]) -> String {
    let (w, h) = (760.0, 280.0);
    // The top margin holds the title and, to its right, one legend line per series.
    let (left, right, top, bottom) = (70.0, 20.0, 48.0, 40.0);
    let n = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    let finite = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .filter(|v| v.is_finite());
    let y_max = finite.fold(0f64, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.05 } else { 1.0 };
    let x_of = |i: usize| left + (w - left - right) * (i as f64) / ((n.max(2) - 1) as f64);
    let y_of = |v: f64| {
        let v = if v.is_finite() {
            v.clamp(0.0, y_max)
        } else {
            y_max
        };
        top + (h - top - bottom) * (1.0 - v / y_max)
    };
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{}\">",
        esc(title)
    );
    let _ = write!(
        s,
        "<text x=\"{left}\" y=\"18\" class=\"t\">{}</text>",
        esc(title)
    );
    // Axes, with a few horizontal grid lines.
    for k in 0..=4 {
        let v = y_max * k as f64 / 4.0;
        let y = y_of(v);
        let _ = write!(
            s,
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" class=\"g\"/><text x=\"{:.1}\" y=\"{:.1}\" class=\"a\" text-anchor=\"end\">{}</text>",
            w - right,
            left - 6.0,
            y + 4.0,
            esc(&fig(v))
        );
    }
    let ticks = n.clamp(1, 10);
    for k in 0..ticks {
        let i = if ticks == 1 {
            0
        } else {
            k * (n - 1) / (ticks - 1)
        };
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"a\" text-anchor=\"middle\">{i}</text>",
            x_of(i),
            h - bottom + 16.0
        );
    }
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" class=\"a\" text-anchor=\"middle\">{}</text>",
        (left + w - right) / 2.0,
        h - 4.0,
        esc(x_label)
    );
    for (k, se) in series.iter().enumerate() {
        let pts: Vec<String> = se
            .values
            .iter()
            .enumerate()
            .map(|(i, &v)| format!("{:.1},{:.1}", x_of(i), y_of(v)))
            .collect();
        let _ = write!(
            s,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\"/>",
            pts.join(" "),
            se.color
        );
        if se.values.len() <= 64 {
            for (i, &v) in se.values.iter().enumerate() {
                let _ = write!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{}\"><title>{} {i}: {}</title></circle>",
                    x_of(i),
                    y_of(v),
                    se.color,
                    esc(se.name),
                    esc(&fig(v))
                );
            }
        }
        let ly = 10.0 + 14.0 * k as f64;
        let _ = write!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"3\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" class=\"a\">{}</text>",
            w - right - 230.0,
            ly,
            se.color,
            w - right - 215.0,
            ly + 4.0,
            esc(se.name)
        );
    }
    s.push_str("</svg>");
    s
}

/// A headline row: label, full-precision value in attributes, rounded display.
fn row(s: &mut String, key: &str, label: &str, value: f64, shown: String) {
    let _ = write!(
        s,
        "<tr><th>{}</th><td data-key=\"{}\" data-value=\"{}\">{}</td></tr>",
        esc(label),
        esc(key),
        value,
        esc(&shown)
    );
}

fn text_row(s: &mut String, key: &str, label: &str, value: &str) {
    let _ = write!(
        s,
        "<tr><th>{}</th><td data-key=\"{}\">{}</td></tr>",
        esc(label),
        esc(key),
        esc(value)
    );
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}\
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:3px 8px;\
text-align:left;font-size:13px;vertical-align:top}th{background:#f4f4f4}\
.pass{color:#17702a}.fail{color:#b00020}.note{color:#8a5a00}.mono{font-family:monospace;white-space:pre-wrap}\
svg{border:1px solid #ddd;margin:6px 0}.t{font-size:14px;font-weight:600}.a{font-size:11px;fill:#444}\
.g{stroke:#eee}";

/// The whole page.
pub fn render(o: &RunOutcome) -> String {
    let r = &o.divergence;
    let mut s = String::new();
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>");
    let _ = write!(
        s,
        "<title>cllm divergence: {}</title><style>{STYLE}</style></head><body>",
        esc(&o.test)
    );
    let _ = write!(
        s,
        "<h1>Divergence report</h1><p>Test <code>{}</code> against reference <code>{}</code> on {}: {} prompts x {} generated tokens and {} evaluation windows x {} tokens of {}, {} scored positions (those predicting a generated token, and the second half of each window), {:.1} s.</p>",
        esc(&o.test),
        esc(&o.reference),
        esc(&super::summary::device(o)),
        r.prompts.streams,
        o.gen_tokens,
        r.eval.streams,
        o.window_tokens,
        esc(&o.eval_text),
        r.positions,
        o.seconds
    );
    if o.ok {
        s.push_str("<h2 class=\"pass\" id=\"verdict\">PASS</h2>");
    } else {
        s.push_str("<h2 class=\"fail\" id=\"verdict\">FAIL</h2><ul>");
        for f in &o.failures {
            let _ = write!(s, "<li>{}</li>", esc(f));
        }
        s.push_str("</ul>");
    }

    s.push_str("<h2>Headline</h2><table id=\"headline\">");
    row(
        &mut s,
        "mean_kld",
        "mean KLD (nats)",
        r.mean_kld,
        fig(r.mean_kld),
    );
    row(&mut s, "kld_p50", "KLD p50", r.kld.p50, fig(r.kld.p50));
    row(&mut s, "kld_p90", "KLD p90", r.kld.p90, fig(r.kld.p90));
    row(&mut s, "kld_p99", "KLD p99", r.kld.p99, fig(r.kld.p99));
    row(&mut s, "kld_max", "KLD max", r.kld.max, fig(r.kld.max));
    row(
        &mut s,
        "top1_agreement",
        "top-1 agreement",
        r.top1_agreement,
        format!("{:.2}%", 100.0 * r.top1_agreement),
    );
    row(
        &mut s,
        "rms_dp",
        "RMS dp of the next token",
        r.rms_dp,
        fig(r.rms_dp),
    );
    row(
        &mut s,
        "ppl_reference",
        "perplexity, reference",
        r.ppl_reference,
        format!("{:.4}", r.ppl_reference),
    );
    row(
        &mut s,
        "ppl_test",
        "perplexity, test",
        r.ppl_test,
        format!("{:.4}", r.ppl_test),
    );
    row(
        &mut s,
        "ppl_ratio",
        "perplexity ratio",
        r.ppl_ratio,
        format!("{:.4}", r.ppl_ratio),
    );
    row(
        &mut s,
        "positions",
        "scored positions",
        r.positions as f64,
        r.positions.to_string(),
    );
    let e = &r.every_position;
    row(
        &mut s,
        "every_position_mean_kld",
        "mean KLD, every position (context included)",
        e.mean_kld,
        fig(e.mean_kld),
    );
    row(
        &mut s,
        "every_position_top1_agreement",
        "top-1 agreement, every position",
        e.top1_agreement,
        format!("{:.2}%", 100.0 * e.top1_agreement),
    );
    let logits = if r.logits.identical {
        format!("bit-identical at all {} positions", r.logits.positions)
    } else {
        format!(
            "differ at {} of {} positions (max |dlogit| {})",
            r.logits.positions_differing,
            r.logits.positions,
            fig(r.logits.max_abs_diff)
        )
    };
    text_row(&mut s, "logits_identical", "logits", &logits);
    text_row(
        &mut s,
        "logits_required",
        "bit-identity required",
        if o.lossless.logits_must_be_identical {
            "yes (both lossless)"
        } else {
            "no"
        },
    );
    text_row(
        &mut s,
        "kv_setting",
        "KV cache (reference / test)",
        &format!("{} / {}", o.kv_cache.reference, o.kv_cache.test),
    );
    for (key, side, p) in [
        (
            "kv_reference",
            "KV cache parity, reference",
            &r.kv_cache.reference,
        ),
        ("kv_test", "KV cache parity, test", &r.kv_cache.test),
    ] {
        let v = if p.identical {
            format!("bit-identical at {} positions", p.positions)
        } else {
            format!(
                "differs at {} of {} positions (max |d| {})",
                p.positions_differing,
                p.positions,
                fig(p.max_abs_diff)
            )
        };
        text_row(&mut s, key, side, &v);
    }
    s.push_str("</table>");

    s.push_str("<h2>Error by layer</h2>");
    let in_model: Vec<f64> = r.layers.iter().map(|l| l.figures.rel_err).collect();
    let mut series = vec![Series {
        name: "hidden state, in-model",
        color: "#1f5fbf",
        values: in_model,
    }];
    if r.tensor_attribution {
        series.push(Series {
            name: "worst tensor of the layer, own",
            color: "#d2691e",
            values: r
                .layers
                .iter()
                .map(|l| l.worst_own_rel_err.unwrap_or(0.0))
                .collect(),
        });
    }
    s.push_str(&line_chart(
        "relative error after each decoder layer",
        "layer",
        &series,
    ));
    // Without per-tensor attribution the last column names the layer's most changed weight
    // (from the weight comparison) rather than a tensor's own error.
    let last = if r.tensor_attribution {
        "worst tensor (own error)"
    } else {
        "weight most changed (weight rel RMS)"
    };
    let _ = write!(s, "<table id=\"layers\"><tr><th>layer</th><th>rel err</th><th>added</th><th>cosine</th><th>{last}</th></tr>");
    for l in &r.layers {
        let (name, err) = if r.tensor_attribution {
            (l.worst_tensor.clone(), l.worst_own_rel_err)
        } else {
            o.weights
                .most_changed_in_layer(l.layer)
                .map_or((None, None), |w| (Some(w.name.clone()), Some(w.rel_rms)))
        };
        let _ = write!(
            s,
            "<tr><td>{}</td><td data-value=\"{}\">{}</td><td>{}</td><td>{:.6}</td><td>{} ({})</td></tr>",
            l.layer,
            l.figures.rel_err,
            fig(l.figures.rel_err),
            fig(l.growth),
            l.figures.cosine,
            esc(name.as_deref().unwrap_or("-")),
            err.map_or("-".into(), fig)
        );
    }
    s.push_str("</table>");

    s.push_str("<h2>KL divergence over token position</h2>");
    s.push_str(&line_chart(
        "mean KLD (nats) at each position, over the streams",
        "position",
        &[Series {
            name: "mean KLD",
            color: "#1f5fbf",
            values: r.kld_by_position.clone(),
        }],
    ));

    s.push_str("<h2>Error by tensor</h2>");
    for n in &o.notes {
        let _ = write!(s, "<p class=\"note\">{}.</p>", esc(n));
    }
    if !r.tensors.is_empty() {
        s.push_str("<p>Own: the test tensor applied to the reference's input, the error it adds alone. In-model: its output in the test model's own run, upstream error included. Weight: relative RMS difference of the weights.</p>");
        s.push_str("<table id=\"tensors\"><tr><th>tensor</th><th>layer</th><th>own rel err</th><th>own cosine</th><th>in-model rel err</th><th>in-model cosine</th><th>weight rel RMS</th></tr>");
        for t in &r.tensors {
            let w = o.weights.get(&t.tensor);
            let _ = write!(
                s,
                "<tr><td class=\"mono\">{}</td><td>{}</td><td data-value=\"{}\">{}</td><td>{}</td><td>{}</td><td>{:.6}</td><td>{}</td></tr>",
                esc(&if t.module == "lm_head" {
                    format!("{} (as LM head)", t.tensor)
                } else {
                    t.tensor.clone()
                }),
                t.layer.map_or("-".into(), |l| l.to_string()),
                t.rank_err(),
                t.own.as_ref().map_or("-".into(), |f| fig(f.rel_err)),
                t.own.as_ref().map_or("-".into(), |f| format!("{:.6}", f.cosine)),
                fig(t.in_model.rel_err),
                t.in_model.cosine,
                w.map_or("-".into(), |w| fig(w.rel_rms))
            );
        }
        s.push_str("</table>");
    }

    s.push_str("<h2>Greedy continuations</h2><table id=\"greedy\"><tr><th>prompt</th><th>first divergence</th><th>shared</th><th>reference</th><th>test</th></tr>");
    for g in &o.greedy_text {
        let _ = write!(
            s,
            "<tr><td class=\"mono\">{}</td><td>{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td></tr>",
            esc(&g.prompt),
            g.first_divergence
                .map_or(format!("none in {}", g.generated), |d| format!("token {d}")),
            esc(&g.shared),
            esc(&g.reference),
            esc(&g.test)
        );
    }
    s.push_str("</table>");

    s.push_str("<h2>Streams</h2><table id=\"streams\"><tr><th>set</th><th>index</th><th>tokens</th><th>mean KLD</th><th>top-1</th></tr>");
    for st in &r.streams {
        let _ = write!(
            s,
            "<tr><td>{:?}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}%</td></tr>",
            st.kind,
            st.index,
            st.tokens,
            fig(st.mean_kld),
            100.0 * st.top1_agreement
        );
    }
    s.push_str("</table>");
    let _ = write!(
        s,
        "<p>Timing: generation {:.1} s, teacher-forced forward passes {:.1} s, per-tensor own error {:.1} s.</p>",
        r.timing.generate_seconds, r.timing.forward_seconds, r.timing.own_error_seconds
    );
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_controls() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(esc("a\u{1}b"), "a\\u{1}b");
    }

    #[test]
    fn charts_are_closed_svg() {
        let c = line_chart(
            "t",
            "x",
            &[Series {
                name: "s",
                color: "#000",
                values: vec![0.0, 1.0, f64::NAN],
            }],
        );
        assert!(c.starts_with("<svg") && c.ends_with("</svg>"));
        assert!(!c.contains("NaN,"));
    }
}
