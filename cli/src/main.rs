//! The `cllm` binary: the command is the library's [`cllm::run_cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(cllm::run_cli(std::env::args_os()))
}
