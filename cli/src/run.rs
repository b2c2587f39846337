//! `cllm run`.

use clap::Args;

use crate::CmdResult;

/// (being built)
#[derive(Args)]
pub struct RunArgs {}

pub fn run(_a: RunArgs) -> CmdResult {
    Err(anyhow::anyhow!("cllm run is not built yet").into())
}
