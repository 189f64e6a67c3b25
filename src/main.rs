//! The one tinykube binary: parses the command line and hands off to a component's `run`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tinykube",
    version,
    about = "A small Kubernetes-compatible cluster in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (and, later, the controllers and scheduler).
    Master {
        #[arg(long, default_value = tinykube_api::constants::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long, default_value = "0.0.0.0:6443")]
        listen: SocketAddr,
        /// The address clients and nodes use to reach this master.
        #[arg(long)]
        advertise_address: Option<IpAddr>,
        /// Do not run a node agent on the master.
        #[arg(long)]
        no_kubelet: bool,
    },
    /// A kubectl-like client.
    Ctl(tinykube_ctl::CtlArgs),
}

/// Lets a CLI killed by a closed pipe (`tinykube ctl get pods | head`) end quietly, as
/// command-line tools do, instead of panicking on the failed write.
fn default_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_DFL at startup, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    // Invoked through a link named `ctl`, the binary is the CLI.
    let argv0 = std::env::args().next().unwrap_or_default();
    let cli = if std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "ctl")
    {
        let args = std::iter::once("tinykube".to_string())
            .chain(std::iter::once("ctl".to_string()))
            .chain(std::env::args().skip(1));
        Cli::parse_from(args)
    } else {
        Cli::parse()
    };
    if matches!(cli.command, Command::Ctl(_)) {
        default_sigpipe();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("TINYKUBE_LOG")
        .unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), String> = runtime.block_on(async {
        match cli.command {
            Command::Master {
                data_dir,
                listen,
                advertise_address,
                no_kubelet: _,
            } => {
                let mut cfg = tinykube_apiserver::MasterConfig::new(data_dir);
                cfg.listen = listen;
                cfg.advertise = advertise_address;
                tinykube_apiserver::run(cfg).await
            }
            Command::Ctl(args) => tinykube_ctl::run(args).await.map_err(|e| format!("{e:#}")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
