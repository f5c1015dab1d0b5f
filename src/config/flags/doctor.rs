//! The options of `goremotecache doctor`: `--json`, then every option of the main mode
//! ([`MainArgs`]), so that it checks the very configuration a build would use.

use clap::Args;

use super::MainArgs;

/// `goremotecache doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct DoctorCommand {
    /// Print one JSON object with every check (name, ok, required, detail, fix) and the
    /// figures (latency, throughput, the estimate), instead of the text report.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub main: MainArgs,
}
