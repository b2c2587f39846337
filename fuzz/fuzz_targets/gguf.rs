//! Raw bytes as a GGUF file: `GgufFile::parse` with default limits must return, never panic, and
//! never allocate more than a small multiple of the input. What parses is then read back: every
//! metadata value and array element, and every tensor's data range (which must lie in the file).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = cllm_gguf::Limits::default();
    let Ok(g) = cllm_gguf::GgufFile::parse(data, &limits) else {
        return;
    };
    cllm_fuzz_gguf::exercise(&g, data.len());
});

mod cllm_fuzz_gguf {
    pub fn exercise(g: &cllm_gguf::GgufFile<'_>, len: usize) {
        for (_, v) in g.metadata().iter() {
            walk(v);
        }
        for t in g.tensors() {
            let end = t
                .file_offset
                .checked_add(t.n_bytes)
                .expect("tensor end overflows");
            assert!(
                end <= len as u64,
                "tensor {} ends at {end}, past the file ({len})",
                t.name
            );
            let bytes = g.tensor_data(t);
            assert_eq!(
                bytes.len() as u64,
                t.n_bytes,
                "tensor {}: data range",
                t.name
            );
            if t.n_elements <= 1 << 22 {
                let _ = cllm_gguf::dequant::dequantize(t.ggml_type, bytes, t.n_elements as usize);
            }
        }
    }

    fn walk(v: &cllm_gguf::MetaValue<'_>) {
        let _ = (
            v.as_u64(),
            v.as_i64(),
            v.as_f64(),
            v.as_bool(),
            v.as_str(),
            v.type_description(),
        );
        if let Some(a) = v.as_array() {
            let _ = (a.to_i64_vec(), a.to_f64_vec(), a.as_strs(), a.len());
            for e in a.iter() {
                walk(&e);
            }
        }
    }
}
