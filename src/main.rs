//! The `backstop` binary: parses the command line and hands over to the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use backstop::app::Workers;
use backstop::config::{self, ConfigError};
use backstop::metrics::Metrics;
use backstop::telemetry::{self, LogFormat};
use backstop::App;
use clap::{Parser, Subcommand};

/// mimalloc: measured faster than glibc malloc on the proxy path (bench/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for an invalid config (`EX_CONFIG` from sysexits is 78; we use 1 as documented).
const EXIT_INVALID: u8 = 1;
/// Exit code when the drain timeout cut requests that were still in flight (documented).
const EXIT_DRAIN_CUT: u8 = 3;

#[derive(Parser)]
#[command(
    name = "backstop",
    version,
    about = "A reliability sidecar for partner and payment APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `-c FILE`, shared by every command that reads a config.
#[derive(clap::Args)]
struct ConfigFile {
    /// Config file.
    #[arg(
        short,
        long,
        env = "BACKSTOP_CONFIG",
        default_value = "config/backstop.yaml"
    )]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[command(flatten)]
        file: ConfigFile,
        /// Log line format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// How connections are spread over the worker threads.
        #[arg(long, value_enum, default_value = "work-stealing")]
        worker_model: WorkerModel,
    },
    /// Check a config file and print every problem.
    Validate {
        #[command(flatten)]
        file: ConfigFile,
        /// Print what a reload from OLD to NEW would change (both must be valid).
        #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
        diff: Option<Vec<PathBuf>>,
    },
    /// Print the JSON Schema of the config file (for editors' YAML support).
    Schema,
    /// Print the Prometheus rule file (recording rules and burn-rate alerts) for the SLOs.
    Rules {
        #[command(flatten)]
        file: ConfigFile,
    },
    /// Run simulated backends, the proxy and a load generator, all on loopback.
    Demo {
        /// Config file for the proxy.
        #[arg(short, long, default_value = "config/demo.yaml")]
        config: PathBuf,
        /// Requests per second the load generator sends.
        #[arg(long, default_value_t = 20)]
        rps: u32,
        /// How long the load generator runs (the proxy keeps running until Ctrl-C).
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        load_for: Duration,
        /// Log line format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate {
            diff: Some(files), ..
        } => diff(&files[0], &files[1]),
        Command::Validate { file, diff: None } => validate(&file.config),
        Command::Schema => {
            println!("{}", config::json_schema());
            ExitCode::SUCCESS
        }
        Command::Rules {
            file: ConfigFile { config },
        } => match config::load(&config) {
            Ok(c) => {
                print!("{}", backstop::slo::rules::render(&c.slos));
                ExitCode::SUCCESS
            }
            Err(e) => {
                print_issues(&config, &e);
                ExitCode::from(EXIT_INVALID)
            }
        },
        Command::Run {
            file: ConfigFile { config },
            log_format,
            workers,
            worker_model,
        } => {
            telemetry::init(log_format, "info");
            let (threads, spread) = worker_model.plan(workers);
            match runtime(threads).and_then(|rt| rt.block_on(run(&config, spread))) {
                Ok(Some(cut)) if cut > 0 => ExitCode::from(EXIT_DRAIN_CUT),
                Ok(Some(_)) => ExitCode::SUCCESS,
                Ok(None) => ExitCode::from(EXIT_INVALID),
                Err(e) => exit(Err(e)),
            }
        }
        Command::Demo {
            config,
            rps,
            load_for,
            log_format,
        } => {
            telemetry::init(log_format, "info,backstop::access=warn");
            let options = backstop::demo::Options { rps, load_for };
            exit(runtime(None).and_then(|rt| rt.block_on(demo(&config, options))))
        }
    }
}

fn validate(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(c) => {
            for warning in &c.warnings {
                eprintln!("{}: warning: {warning}", path.display());
            }
            println!(
                "{}: valid ({} routes, {} upstreams, sha256 {})",
                path.display(),
                c.routes.len(),
                c.upstreams.len(),
                &c.sha256[..12]
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_issues(path, &e);
            ExitCode::from(EXIT_INVALID)
        }
    }
}

fn diff(old: &Path, new: &Path) -> ExitCode {
    let (a, b) = match (config::load(old), config::load(new)) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            for (path, result) in [(old, a), (new, b)] {
                if let Err(e) = result {
                    print_issues(path, &e);
                }
            }
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let changes = config::diff(&a, &b);
    if changes.is_empty() {
        println!("no changes");
    }
    for line in changes {
        println!("{line}");
    }
    ExitCode::SUCCESS
}

fn print_issues(path: &Path, error: &ConfigError) {
    let issues = error.issues();
    eprintln!("{}: {} problem(s):", path.display(), issues.len());
    for line in issues {
        eprintln!("  {line}");
    }
}

/// `backstop run --worker-model`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum WorkerModel {
    /// One tokio multi-thread runtime; idle threads steal work from busy ones.
    WorkStealing,
    /// One current-thread runtime per worker, all accepting from the one listening socket.
    PerCore,
}

impl WorkerModel {
    /// The main runtime's threads and how the proxy listener is spread.
    fn plan(self, workers: Option<usize>) -> (Option<usize>, Workers) {
        match self {
            WorkerModel::WorkStealing => (workers, Workers::Shared),
            WorkerModel::PerCore => {
                let n = workers.unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
                });
                (Some(1), Workers::PerCore(n))
            }
        }
    }
}

fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

/// Loads the config or prints its problems; `Ok(None)` means invalid (already reported).
fn load_config(path: &Path) -> Option<config::Config> {
    match config::load(path) {
        Ok(c) => Some(c),
        Err(e) => {
            print_issues(path, &e);
            None
        }
    }
}

/// Serves until SIGTERM/SIGINT; `None` for an invalid config, else how many requests the
/// drain cut.
async fn run(path: &Path, workers: Workers) -> anyhow::Result<Option<usize>> {
    let Some(config) = load_config(path) else {
        return Ok(None);
    };
    let warnings = config.warnings.clone();
    let app = App::start_with_workers(config, Metrics::new(), path, workers).await?;
    for warning in warnings {
        tracing::warn!(path = %path.display(), "{warning}");
    }
    shutdown_signal().await?;
    tracing::info!("shutdown signal received");
    Ok(Some(app.shutdown().await.cut))
}

async fn demo(path: &Path, options: backstop::demo::Options) -> anyhow::Result<bool> {
    let Some(config) = load_config(path) else {
        return Ok(false);
    };
    let demo = backstop::demo::Demo::start(config, options).await?;
    demo.print_welcome();
    shutdown_signal().await?;
    tracing::info!("stopping the demo");
    demo.shutdown().await;
    Ok(true)
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn exit(result: anyhow::Result<bool>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_INVALID),
        Err(e) => {
            eprintln!("backstop: {e:#}");
            ExitCode::FAILURE
        }
    }
}
