//! `ferry-sidecar`: runs next to a workload and keeps its brokered secrets
//! in a memory-backed volume for exactly as long as the pod lives.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ferry_contract::{self as contract, env};
use ferry_sidecar::broker_client::{BrokerClient, tls_config};
use ferry_sidecar::config::SidecarConfig;
use ferry_sidecar::keeper::{Deadlines, Keeper};
use ferry_sidecar::log;
use ferry_sidecar::volume::SecretVolume;
use serde_json::json;

/// Command-line interface of the sidecar. Its configuration comes from the
/// environment the ferry webhook sets (`FERRY_*`).
#[derive(Debug, Parser)]
#[command(name = "ferry-sidecar", version, about, long_about = None, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch the pod's secrets, keep them renewed, and at SIGTERM revoke
    /// and wipe them (the sidecar container's main process).
    #[command(name = contract::SIDECAR_RUN_ARG)]
    Run(Limits),
    /// Fetch and write the secrets once and exit 0, for Jobs or clusters
    /// without native sidecars. Nothing renews, revokes or wipes them
    /// afterwards: the leases simply expire.
    Init(Limits),
    /// Exit 0 if every secret is written and current, else 1 with the
    /// reason on stderr (the startup probe; never calls the broker).
    #[command(name = contract::SIDECAR_PROBE_ARG)]
    Probe {
        /// The secrets volume.
        #[arg(long, env = env::SECRETS_DIR)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct Limits {
    /// Give up (exit non-zero, for the kubelet to restart) if the secrets
    /// are not written within this many seconds.
    #[arg(long, env = env::STARTUP_TIMEOUT_SECONDS, default_value_t = 120)]
    startup_timeout_seconds: u64,
    /// Time limit of one broker call, connect to last byte.
    #[arg(long, default_value_t = 10)]
    call_timeout_seconds: u64,
    /// Time limit of all revocations together at shutdown.
    #[arg(long, default_value_t = 5)]
    revoke_timeout_seconds: u64,
}

impl Limits {
    fn deadlines(&self) -> Deadlines {
        Deadlines {
            startup: Duration::from_secs(self.startup_timeout_seconds),
            call: Duration::from_secs(self.call_timeout_seconds.max(1)),
            revoke: Duration::from_secs(self.revoke_timeout_seconds),
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(limits) => match keeper(&limits) {
            Ok(keeper) => keeper.run(),
            Err(code) => code,
        },
        Command::Init(limits) => match keeper(&limits) {
            Ok(keeper) => keeper.init(),
            Err(code) => code,
        },
        Command::Probe { dir } => {
            // Every failure is a plain "not ready" (exit 1), never a usage error.
            let ready = match dir {
                Some(dir) => SecretVolume::new(dir, None).check_ready(),
                None => Err(format!("{} is not set", env::SECRETS_DIR)),
            };
            match ready {
                Ok(()) => ExitCode::SUCCESS,
                Err(reason) => {
                    eprintln!("not ready: {reason}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Reads the configuration and sets up TLS, or says why not.
fn keeper(limits: &Limits) -> Result<Keeper, ExitCode> {
    let fail = |message: String| {
        log::error("config_invalid", json!({ "error": message }));
        ExitCode::FAILURE
    };
    let config = SidecarConfig::from_env().map_err(|e| fail(e.to_string()))?;
    let tls = tls_config(config.broker_ca_pem.as_deref())
        .map_err(|e| fail(format!("{}: {e}", env::BROKER_CA)))?;
    let deadlines = limits.deadlines();
    let client = BrokerClient::new(
        config.broker_url.clone(),
        tls,
        config.token_file.clone(),
        deadlines.call,
    );
    Ok(Keeper::new(config, client, deadlines))
}
