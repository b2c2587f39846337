//! `cllm demo`.

use clap::Args;

use crate::CmdResult;

/// (being built)
#[derive(Args)]
pub struct DemoArgs {}

pub fn run(_a: DemoArgs) -> CmdResult {
    Err(anyhow::anyhow!("cllm demo is not built yet").into())
}
