//! The `cllm` binary: the command is the library's [`cllm::run_cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    ExitCode::from(cllm::run_cli(std::env::args_os()))
}

/// `cllm inspect m.cllm | head`: when the reader of stdout goes away, `print!` panics on the
/// broken pipe (Rust ignores SIGPIPE). Exit quietly with the shell's status for SIGPIPE instead,
/// as other command-line tools do; every other panic keeps the default report.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}
