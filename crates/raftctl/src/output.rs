//! Output format selection shared by all subcommands.
use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable table/text.
    Table,
    /// JSON for scripts.
    Json,
}
