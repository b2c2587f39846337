//! Raw bytes as a `.cllm` file: open, verify, decode every tensor and file, with small limits.
//!
//! The first input byte picks how much of the file's integrity data the harness repairs before
//! reading, so that mutations get past the checksums to the checks behind them:
//! 0: none (the bytes as they are); 1: the footer's index checksum; 2: every frame checksum,
//! stream hash and lossless source hash too. The rest of the input is the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, file)) = data.split_first() else {
        return;
    };
    let limits = cllm_fuzz::small_limits();
    match mode % 3 {
        0 => cllm_fuzz::exercise(file, &limits),
        1 => {
            let mut f = file.to_vec();
            cllm_fuzz::fix_footer_checksum(&mut f);
            cllm_fuzz::exercise(&f, &limits);
        }
        _ => match cllm_fuzz::fix_all_hashes(file) {
            Some(f) => cllm_fuzz::exercise(&f, &limits),
            None => cllm_fuzz::exercise(file, &limits),
        },
    }
});
