//! `raftctl bench`: throughput and latency percentiles of local clusters (placeholder).
use clap::Args;

use crate::output::OutputFormat;

#[derive(Debug, Args)]
pub struct BenchArgs {}

pub async fn run(_a: &BenchArgs, _out: OutputFormat) -> anyhow::Result<()> {
    anyhow::bail!("bench: not implemented yet")
}
