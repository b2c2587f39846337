//! The NVRTC program of the kernels: the CUDA C sources of this folder, between two generated
//! parts written from `cllm_format::WeightForm` and the per-kind kernel lists of [`gemv`]: the
//! weight kinds' codes (`KIND_*`) before the sources, and the entry points of the GEMV kernels
//! after them. A weight form added to the format gets its code and entry points here without
//! anyone keeping a table in step.
//!
//! [`gemv`]: super::gemv

use cllm_cuda::{Program, Source};
use cllm_format::WeightForm;

use super::gemv::{own_kernel, streams, MMA_TOKENS, TOKENS};

/// The hand-written sources, in the order they are concatenated.
const SOURCES: [(&str, &str); 6] = [
    ("common.cuh", include_str!("common.cuh")),
    ("gemv.cu", include_str!("gemv.cu")),
    ("gemv_mma.cu", include_str!("gemv_mma.cu")),
    ("attention.cu", include_str!("attention.cu")),
    ("misc.cu", include_str!("misc.cu")),
    ("sample.cu", include_str!("sample.cu")),
];

/// `KIND_BF16`.
pub(crate) fn kind_macro(form: WeightForm) -> String {
    format!("KIND_{}", form.kind_name())
}

/// The one-token GEMV compiled for `form` alone.
pub(crate) fn own_kernel_name(form: WeightForm) -> String {
    format!("gemv_t1_{}", form.kind_name().to_lowercase())
}

/// The streaming one-token GEMV of `form`.
pub(crate) fn stream_kernel_name(form: WeightForm) -> String {
    format!("gemv_s1_{}", form.kind_name().to_lowercase())
}

/// The GEMV for any mix of weight kinds, `nt` tokens per block.
pub(crate) fn mixed_kernel_name(nt: usize) -> String {
    format!("gemv_t{nt}")
}

/// The tensor-core GEMV, `nt` tokens per block: per-row int8 (`m`) or int8g (`g`).
pub(crate) fn mma_kernel_name(group_wise: bool, nt: usize) -> String {
    format!("gemv_{}{nt}", if group_wise { 'g' } else { 'm' })
}

/// The weight kinds' codes.
fn kinds_header() -> String {
    let mut s = String::from("// Generated from cllm_format::WeightForm: the weight kinds.\n");
    for form in WeightForm::ALL {
        s.push_str(&format!("#define {} {}\n", kind_macro(form), form.code()));
    }
    s
}

/// The GEMV kernels' entry points (the macros are gemv.cu's and gemv_mma.cu's).
fn entry_points() -> String {
    let mut s = String::from("// Generated: the GEMV entry points.\n");
    for nt in TOKENS {
        s.push_str(&format!(
            "GEMV_ENTRY({}, {nt}, -1)\n",
            mixed_kernel_name(nt)
        ));
    }
    for form in WeightForm::ALL.into_iter().filter(|&f| own_kernel(f)) {
        s.push_str(&format!(
            "GEMV_ENTRY({}, 1, {})\n",
            own_kernel_name(form),
            kind_macro(form)
        ));
    }
    for form in WeightForm::ALL.into_iter().filter(|&f| streams(f)) {
        s.push_str(&format!(
            "GEMV_STREAM_ENTRY({}, {})\n",
            stream_kernel_name(form),
            kind_macro(form)
        ));
    }
    for group_wise in [false, true] {
        for nt in MMA_TOKENS {
            s.push_str(&format!(
                "GEMV_MMA_ENTRY({}, {nt}, {group_wise})\n",
                mma_kernel_name(group_wise, nt)
            ));
        }
    }
    s
}

/// `CLLM_NVRTC_DEFINES="-DNAME[=VALUE],..."`: a variant of the kernels (cached under its own
/// key), a measurement aid for timing one kernel choice against another in the same run.
pub fn defines_from_env() -> Vec<String> {
    std::env::var("CLLM_NVRTC_DEFINES")
        .map(|defs| {
            defs.split([' ', ','])
                .filter_map(|d| d.strip_prefix("-D"))
                .filter(|d| !d.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The kernels' program, compiled with `defines` (`NAME` or `NAME=VALUE`).
pub fn program(defines: Vec<String>) -> Program {
    let mut sources = vec![Source {
        name: "kinds (generated)".into(),
        text: kinds_header(),
    }];
    sources.extend(SOURCES.iter().map(|(name, text)| Source {
        name: name.to_string(),
        text: text.to_string(),
    }));
    sources.push(Source {
        name: "entry points (generated)".into(),
        text: entry_points(),
    });
    Program { sources, defines }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_defined_once_and_every_entry_point_generated() {
        let text = program(Vec::new()).text();
        for form in WeightForm::ALL {
            let def = format!("#define {} {}\n", kind_macro(form), form.code());
            assert_eq!(text.matches(&def).count(), 1, "{def}");
        }
        // No source defines a kind by hand.
        for (name, src) in SOURCES {
            assert!(!src.contains("#define KIND_"), "{name} defines a kind");
        }
        assert!(text.contains("GEMV_ENTRY(gemv_t1_bf16, 1, KIND_BF16)"));
        assert!(text.contains("GEMV_STREAM_ENTRY(gemv_s1_int4, KIND_INT4)"));
        assert!(text.contains("GEMV_MMA_ENTRY(gemv_g8, 8, true)"));
        assert!(
            !text.contains("gemv_t1_int8g"),
            "int8g has no kernel of its own"
        );
    }

    /// Compiles the real kernels when NVRTC can be loaded (no GPU needed); skipped otherwise.
    #[test]
    fn kernels_compile_with_nvrtc_when_available() {
        match cllm_cuda::compile::compile_check("sm_90", &program(Vec::new())) {
            None => eprintln!("NVRTC not found: skipped"),
            Some(r) => assert!(r.unwrap_or_else(|e| panic!("{e}")) > 0),
        }
    }
}
