//! Export to a Hugging Face folder in the compressed-tensors format (vLLM, SGLang).

use std::path::Path;

use cllm_loader::Packed;

use crate::{ExportError, ExportSummary};

/// Writes `packed` into the (empty, existing) folder `dir`.
pub fn export(packed: &Packed, dir: &Path) -> Result<ExportSummary, ExportError> {
    let _ = (packed, dir);
    Err(ExportError::Unsupported(
        "compressed-tensors export is being written".into(),
    ))
}
