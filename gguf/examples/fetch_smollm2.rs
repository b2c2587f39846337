//! Fetches (if missing) the real test model and prints its path.
fn main() {
    match cllm_fixtures::real_model::ensure_smollm2_gguf() {
        Ok(p) => println!("{}", p.display()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
