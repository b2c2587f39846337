//! `cllm bench`.

use clap::Args;

use crate::CmdResult;

/// (being built)
#[derive(Args)]
pub struct BenchArgs {}

pub fn run(_a: BenchArgs) -> CmdResult {
    Err(anyhow::anyhow!("cllm bench is not built yet").into())
}
