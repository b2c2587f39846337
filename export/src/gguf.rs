//! Export to GGUF (llama.cpp).

use std::io::Write;

use cllm_loader::Packed;

use crate::{ExportError, ExportSummary};

/// Options of `cllm export --to gguf`.
#[derive(Clone, Debug, Default)]
pub struct GgufOptions {
    /// A GGUF type name (`Q8_0`, `Q4_0`, `Q4_1`) for quantized tensors no type carries exactly.
    pub requantize: Option<String>,
}

/// Writes `packed` as one GGUF file.
pub fn export(
    packed: &Packed,
    out: &mut dyn Write,
    opts: &GgufOptions,
) -> Result<ExportSummary, ExportError> {
    let _ = (packed, out, opts);
    Err(ExportError::Unsupported(
        "GGUF export is being written".into(),
    ))
}
