//! Bytes split into a Hugging Face model folder, written to a temporary directory, then
//! `HfFolder::open`. Input layout: `[u32 n][n bytes config.json][u32 m][m bytes index json][rest]`:
//! the rest is one safetensors file, `model.safetensors` when the index is empty, otherwise
//! `model-00001-of-00001.safetensors` next to `model.safetensors.index.json`. Lengths are clamped
//! to what is left. Opening must return, never panic, and stay within libFuzzer's memory limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn take<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    if data.len() < 4 {
        let all = *data;
        *data = &[];
        return all;
    }
    let n = (u32::from_le_bytes(data[..4].try_into().unwrap()) as usize).min(data.len() - 4);
    let (part, rest) = data[4..].split_at(n);
    *data = rest;
    part
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let config = take(&mut rest);
    let index = take(&mut rest);
    let dir = tempfile::tempdir().expect("temporary folder");
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    if index.is_empty() {
        std::fs::write(dir.path().join("model.safetensors"), rest).unwrap();
    } else {
        std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
        std::fs::write(dir.path().join("model-00001-of-00001.safetensors"), rest).unwrap();
    }
    let _ = cllm_loader::hf::HfFolder::open(dir.path());
});
