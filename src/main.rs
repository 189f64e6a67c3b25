//! The one tinykube binary: parses the command line and hands off to a component's
//! `run`; errors become one line on stderr and a non-zero exit here.

mod install;
mod lab;
mod master;
mod toolbox;
mod worker;

use std::process::ExitCode;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: freed pages go back to the kernel 5 s after
/// they were last used (dirty), and two arenas for the two-core machines this runs on
/// keep the idle footprint small.
#[cfg(feature = "jemalloc")]
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: &[u8; 47] = b"narenas:2,dirty_decay_ms:5000,muzzy_decay_ms:0\0";

/// Every arena's unused pages back to the kernel now (`arena.<MALLCTL_ARENAS_ALL>.purge`).
#[cfg(feature = "jemalloc")]
fn jemalloc_purge() {
    // SAFETY: a NUL-terminated mallctl name that takes and returns nothing.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run the API server, the controllers and the scheduler.
    Master(master::MasterArgs),
    /// Run the node agent: register this machine and run the pods bound to it.
    Worker(worker::WorkerArgs),
    /// Build a local cluster on this machine: a master and workers, each in its own
    /// network namespace on a lab bridge (192.168.56.0/24 by default).
    Up(lab::UpArgs),
    /// Remove a local cluster and everything it left behind.
    Down(lab::DownArgs),
    /// PID 1 of a pod sandbox (runs inside the pause image).
    #[command(hide = true)]
    Pause,
    /// Programs of the toolbox image: `serve` (HTTP on 8080 saying which pod answered)
    /// and `fetch URL` (requests it repeatedly and prints the answers).
    Toolbox {
        #[command(subcommand)]
        command: toolbox::ToolboxCommand,
    },
    /// Register fake nodes that run no containers but report pods Running (kubemark-style).
    HollowNodes(worker::HollowArgs),
    /// A kubectl-like client.
    Ctl(tinykube_ctl::CtlArgs),
    /// Install this binary and a systemd unit running `tinykube master|worker FLAGS`
    /// (flags after `--`), enabled and started when systemd runs.
    Install(install::InstallArgs),
    /// Remove what `install` put in place (the data dir stays).
    Uninstall(install::UninstallArgs),
}

/// Lets a CLI killed by a closed pipe (`tinykube ctl get pods | head`) end quietly, as
/// command-line tools do, instead of panicking on the failed write.
fn default_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_DFL at startup, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The command line; invoked through a link named `ctl` (or `kubectl`, which `install`
/// makes where there is none), the binary is the CLI.
fn parse() -> Cli {
    let argv0 = std::env::args().next().unwrap_or_default();
    if std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "ctl" || n == "kubectl")
    {
        let args = ["tinykube".to_string(), "ctl".to_string()]
            .into_iter()
            .chain(std::env::args().skip(1));
        Cli::parse_from(args)
    } else {
        Cli::parse()
    }
}

/// One line on stderr and a non-zero exit for an error.
fn done(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Daemons keep their resident size small. jemalloc: a background thread hands aged
/// free pages back even while the heap is idle (the pause and the toolbox, one per pod,
/// go without it), and `--memory-trim-interval` purges every arena. glibc: at most two
/// malloc arenas, where it would otherwise grow one per thread that allocates.
fn daemon_allocator() {
    #[cfg(feature = "jemalloc")]
    {
        let mut on = true;
        // SAFETY: "background_thread" takes a bool, passed by pointer with its size.
        unsafe {
            tikv_jemalloc_sys::mallctl(
                c"background_thread".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                (&raw mut on).cast(),
                std::mem::size_of::<bool>(),
            );
        }
        tinykube_api::memory::set_release(jemalloc_purge);
    }
    #[cfg(not(any(feature = "jemalloc", feature = "mimalloc")))]
    // SAFETY: mallopt before any allocation-heavy work; it only tunes the allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    let cli = parse();
    // The sandbox's PID 1 and the toolbox run inside containers: no async runtime, no
    // log setup.
    match cli.command {
        Command::Pause => tinykube_kubelet::pause::run(),
        Command::Toolbox { command } => {
            return toolbox::run(command).unwrap_or_else(|e| {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            });
        }
        Command::Ctl(_) => default_sigpipe(),
        Command::Install(args) => return done(install::install(args)),
        Command::Uninstall(args) => return done(install::uninstall(args)),
        Command::Master(_) | Command::Worker(_) => daemon_allocator(),
        _ => {}
    }
    // One TLS crypto provider for every client in the process (kube, registry pulls).
    let _ = rustls::crypto::ring::default_provider().install_default();
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
    let result = runtime.block_on(async {
        match cli.command {
            Command::Master(args) => master::run(args).await,
            Command::Worker(args) => worker::run(args).await,
            Command::Up(args) => lab::up(args).await,
            Command::Down(args) => lab::down(args).await,
            Command::HollowNodes(args) => worker::run_hollow(args).await,
            Command::Ctl(args) => tinykube_ctl::run(args).await.map_err(|e| format!("{e:#}")),
            Command::Pause
            | Command::Toolbox { .. }
            | Command::Install(_)
            | Command::Uninstall(_) => {
                unreachable!("handled before the runtime starts")
            }
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
