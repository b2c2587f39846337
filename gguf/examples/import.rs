//! `cargo run -p cllm-gguf --release --example import -- MODEL.gguf OUT_DIR`
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [src, out] = args.as_slice() else {
        eprintln!("usage: import MODEL.gguf OUT_DIR");
        std::process::exit(2);
    };
    let t = std::time::Instant::now();
    match cllm_gguf::import(src.as_ref(), out.as_ref()) {
        Ok(s) => println!("{s:#?}\n({:.2?})", t.elapsed()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
