//! `cllm`: pack LLM weights into a verified, versioned container, and run them.
//!
//! Exit codes, for CI: 0 when everything holds, 1 when a verification or comparison fails,
//! 2 for usage and I/O errors.
//!
//! The command is this library's [`run_cli`]: `src/main.rs` is a thin wrapper, and the Python
//! package (`python/`) calls the same entry so that `pip install cllm` brings the same command.

mod atomic;
mod bench;
mod common;
mod demo;
mod divergence;
mod export;
mod import;
mod inspect;
mod pack;
mod progress;
mod run;
#[cfg(feature = "synth")]
mod synth;
mod unpack;
mod verify;

use std::ffi::OsString;

use clap::{Parser, Subcommand};

/// Pack LLM weights into a verified, versioned `.cllm` container, and run them.
#[derive(Parser)]
#[command(name = "cllm", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Pack(pack::PackArgs),
    Inspect(inspect::InspectArgs),
    Verify(verify::VerifyArgs),
    Diff(divergence::DiffArgs),
    Unpack(unpack::UnpackArgs),
    Export(export::ExportArgs),
    #[cfg(feature = "synth")]
    Synth(synth::SynthArgs),
    ImportGguf(import::ImportArgs),
    Run(run::RunArgs),
    Demo(demo::DemoArgs),
    Bench(bench::BenchArgs),
}

/// How a command ended, beyond success.
#[derive(Debug)]
pub enum Failure {
    /// Verification or comparison failed: exit 1.
    Check(String),
    /// Usage or I/O error: exit 2.
    Error(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Error(e.into())
    }
}

pub type CmdResult = Result<(), Failure>;

/// Runs the command line `args` (the program name first, as [`std::env::args_os`] gives it) and
/// returns the exit code: 0 when everything holds, 1 when a verification or comparison fails, 2
/// for usage and I/O errors (clap's own: 0 for `--help` and `--version`, 2 for a bad flag).
pub fn run_cli<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // What `Cli::parse` does, less the process exit: help and version to stdout, errors
            // to stderr, each with clap's exit code.
            let _ = e.print();
            return e.exit_code().clamp(0, 255) as u8;
        }
    };
    let result = match cli.command {
        Command::Pack(a) => pack::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Diff(a) => divergence::run_diff(a),
        Command::Unpack(a) => unpack::run(a),
        Command::Export(a) => export::run(a),
        #[cfg(feature = "synth")]
        Command::Synth(a) => synth::run(a),
        Command::ImportGguf(a) => import::run(a),
        Command::Run(a) => run::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Bench(a) => bench::run(a),
    };
    match result {
        Ok(()) => 0,
        Err(Failure::Check(msg)) => {
            eprintln!("cllm: FAILED: {msg}");
            1
        }
        Err(Failure::Error(e)) => {
            eprintln!("cllm: error: {}", error_text(&e));
            2
        }
    }
}

/// The error and its causes, joined by ": ", leaving out a cause the text before it already
/// says (the libraries' errors write their source into their own message).
fn error_text(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}
