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
/// Exit code of `validate --diff` / `--against` when the change needs a restart (documented).
const EXIT_NEEDS_RESTART: u8 = 2;
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
        /// How connections are spread over the worker threads (per-core measured faster:
        /// bench/README.md).
        #[arg(long, value_enum, default_value = "per-core")]
        worker_model: WorkerModel,
    },
    /// Check a config file and print every problem, then the lint warnings.
    Validate {
        #[command(flatten)]
        file: ConfigFile,
        /// Exit 1 on lint warnings too.
        #[arg(long)]
        strict: bool,
        /// Print what a reload from OLD to NEW would change (both must be valid); exit 2 when
        /// it needs a restart.
        #[arg(long, num_args = 2, value_names = ["OLD", "NEW"], conflicts_with = "against")]
        diff: Option<Vec<PathBuf>>,
        /// Print what reloading the -c file into the backstop whose admin listener is at this
        /// URL (http://host:port) would change; exit 2 when it needs a restart.
        #[arg(long, value_name = "ADMIN_URL")]
        against: Option<String>,
        /// Bearer token for --against when the admin API protects its reads.
        #[arg(long, env = "BACKSTOP_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Print settings that are valid but probably not what was meant, each with a fix.
    Lint {
        #[command(flatten)]
        file: ConfigFile,
        /// Exit 1 when there is any finding.
        #[arg(long)]
        strict: bool,
    },
    /// Print the JSON Schema of the config file (for editors' YAML support).
    Schema {
        /// Print instead the JSON Schema of every typed admin view (`GET /admin/config`,
        /// `/admin/routes`, `/admin/upstreams`, `/admin/slos`), one object keyed by path.
        #[arg(long)]
        admin: bool,
    },
    /// Print the Prometheus rule file (SLO recording rules and burn-rate alerts, operational
    /// alerts), shaped by `slos_rules:`.
    Rules {
        #[command(flatten)]
        file: ConfigFile,
    },
    /// Replay recorded traffic through the config's policies in virtual time and report what
    /// would have happened (no network).
    Simulate {
        #[command(flatten)]
        file: ConfigFile,
        /// backstop's JSON access log, or a CSV `timestamp,method,host,path,status,latency_ms[,key]`.
        #[arg(long)]
        traffic: PathBuf,
        /// A second config to run on the same traffic, shown side by side.
        #[arg(long)]
        compare: Option<PathBuf>,
        /// Report format.
        #[arg(long, value_enum, default_value = "text")]
        format: ReportFormat,
    },
    /// SLO tools: the `slos:` section as OpenSLO v1 and back.
    Slo {
        #[command(subcommand)]
        action: SloAction,
    },
    /// Run simulated backends, the proxy and a load generator, all on loopback.
    ///
    /// The demo config is built in, so this works from any directory. --port-base N moves every
    /// port to a fixed layout from N.
    #[command(after_help = demo_help())]
    Demo {
        /// Config file for the proxy (default: the built-in config/demo.yaml).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Requests per second the load generator sends.
        #[arg(long, default_value_t = 20)]
        rps: u32,
        /// How long the load generator runs (the proxy keeps running until Ctrl-C).
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        load_for: Duration,
        /// Move every port (proxy, admin, simulated backends) to the layout below; 0 lets the
        /// OS pick free ports (the welcome shows them). Without it the config's ports are used
        /// (proxy 8080, admin 9901, backends 19101-19401).
        #[arg(long, value_name = "N")]
        port_base: Option<u16>,
        /// Print the demo config (with the ports moved by --port-base) and exit.
        #[arg(long)]
        print_config: bool,
        /// Log line format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
}

/// `backstop demo --help`: the port layout.
fn demo_help() -> String {
    format!(
        "Port layout with --port-base N: {}.",
        backstop::demo::ports::describe_layout()
    )
}

#[derive(Subcommand)]
enum SloAction {
    /// Print the config's SLOs as OpenSLO v1 YAML (one `kind: SLO` document each).
    Export {
        #[command(flatten)]
        file: ConfigFile,
        /// The output format (OpenSLO v1 is the only one).
        #[arg(long, required = true)]
        openslo: bool,
    },
    /// Read an OpenSLO v1 file and print the backstop `slos:` section; exit 1, saying why,
    /// when an SLO cannot be expressed in backstop.
    Import {
        /// OpenSLO YAML file (several documents allowed).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate {
            diff: Some(files), ..
        } => diff(&files[0], &files[1]),
        Command::Validate {
            file,
            against: Some(url),
            token,
            ..
        } => against(&file.config, &url, token.as_deref()),
        Command::Validate { file, strict, .. } => validate(&file.config, strict),
        Command::Lint { file, strict } => lint(&file.config, strict),
        Command::Schema { admin } => {
            if admin {
                let schemas = backstop::admin::views::schemas();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&schemas).unwrap_or_default()
                );
            } else {
                println!("{}", config::json_schema());
            }
            ExitCode::SUCCESS
        }
        Command::Simulate {
            file: ConfigFile { config },
            traffic,
            compare,
            format,
        } => simulate(&config, &traffic, compare.as_deref(), format),
        Command::Rules {
            file: ConfigFile { config },
        } => match config::load(&config) {
            Ok(c) => {
                print!("{}", backstop::slo::rules::render(&c.slos, &c.slos_rules));
                ExitCode::SUCCESS
            }
            Err(e) => {
                print_issues(&config, &e);
                ExitCode::from(EXIT_INVALID)
            }
        },
        Command::Slo {
            action: SloAction::Export { file, .. },
        } => match load_config(&file.config) {
            Some(c) => {
                print!("{}", backstop::slo::openslo::export(&c));
                ExitCode::SUCCESS
            }
            None => ExitCode::from(EXIT_INVALID),
        },
        Command::Slo {
            action: SloAction::Import { file },
        } => slo_import(&file),
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
            port_base,
            print_config,
            log_format,
        } => {
            let text = match config.as_deref().map(std::fs::read_to_string) {
                None => backstop::demo::ports::CONFIG.to_owned(),
                Some(Ok(text)) => text,
                Some(Err(e)) => {
                    eprintln!(
                        "backstop: cannot read {}: {e}",
                        config.unwrap_or_default().display()
                    );
                    return ExitCode::FAILURE;
                }
            };
            if print_config {
                return print_demo_config(&text, port_base);
            }
            telemetry::init(log_format, "info,backstop::access=warn");
            let options = backstop::demo::Options {
                rps,
                load_for,
                port_base,
            };
            exit(runtime(None).and_then(|rt| rt.block_on(demo(&text, options))))
        }
    }
}

/// `backstop demo --print-config`.
fn print_demo_config(text: &str, port_base: Option<u16>) -> ExitCode {
    use backstop::demo::ports;
    let moved = match port_base {
        None => Ok(text.to_owned()),
        Some(0) => {
            eprintln!(
                "backstop: --print-config needs a fixed --port-base (0 picks ports at start)"
            );
            return ExitCode::FAILURE;
        }
        Some(base) => ports::parse(text)
            .and_then(|tree| ports::Layout::from_base(base, ports::endpoints(&tree).len()))
            .and_then(|layout| ports::rewrite(text, &layout)),
    };
    match moved {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("backstop: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Errors on stderr and exit 1; else lint warnings on stderr, the summary on stdout, and exit
/// 0 (1 with `--strict` when there are warnings).
fn validate(path: &Path, strict: bool) -> ExitCode {
    match config::load_with_text(path) {
        Ok((c, text)) => {
            for warning in &c.warnings {
                eprintln!("{}: warning: {warning}", path.display());
            }
            let findings = config::lint(&c, &text);
            for finding in &findings {
                eprintln!("{}: {finding}", path.display());
            }
            println!(
                "{}: valid ({} routes, {} upstreams, sha256 {}){}",
                path.display(),
                c.routes.len(),
                c.upstreams.len(),
                &c.sha256[..12],
                match findings.len() {
                    0 => String::new(),
                    n => format!(", {n} lint warning(s)"),
                }
            );
            if strict && !findings.is_empty() {
                ExitCode::from(EXIT_INVALID)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            print_issues(path, &e);
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// Findings on stdout; exit 1 for an invalid file, or with `--strict` for any finding.
fn lint(path: &Path, strict: bool) -> ExitCode {
    match config::load_with_text(path) {
        Ok((c, text)) => {
            let findings = config::lint(&c, &text);
            for finding in &findings {
                println!("{}: {finding}", path.display());
            }
            if findings.is_empty() {
                println!("{}: no findings", path.display());
            }
            if strict && !findings.is_empty() {
                ExitCode::from(EXIT_INVALID)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            print_issues(path, &e);
            ExitCode::from(EXIT_INVALID)
        }
    }
}

fn diff(old: &Path, new: &Path) -> ExitCode {
    let (a, b) = match (config::load_with_text(old), config::load_with_text(new)) {
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
    print_changes(&config::diff(&a.1, &a.0, &b.1, &b.0))
}

fn print_changes(changes: &[config::Change]) -> ExitCode {
    if changes.is_empty() {
        println!("no changes");
    }
    for change in changes {
        println!("{}", change.line);
    }
    if changes.iter().any(|c| c.needs_restart) {
        ExitCode::from(EXIT_NEEDS_RESTART)
    } else {
        ExitCode::SUCCESS
    }
}

/// Diffs the file against `GET /admin/config` of a running backstop.
fn against(path: &Path, url: &str, token: Option<&str>) -> ExitCode {
    let local = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            print_issues(path, &e);
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let running = match get_json(url, "/admin/config", token) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("backstop: {e}");
            return ExitCode::FAILURE;
        }
    };
    if running.get("sha256").and_then(|s| s.as_str()) == Some(local.sha256.as_str()) {
        println!("no changes (the running config has the same sha256)");
        return ExitCode::SUCCESS;
    }
    match running_diff(local, &running) {
        Ok(changes) => print_changes(&changes),
        Err(e) => exit(Err(e)),
    }
}

/// The running config's admin view against the same view of `local`. The admin view shows
/// some blocks as one text, so a change inside them is shown as the whole block.
fn running_diff(
    local: config::Config,
    running: &serde_json::Value,
) -> anyhow::Result<Vec<config::Change>> {
    let mut changes = Vec::new();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
    for (path, was, now) in [
        ("listen", text(&running["listen"]), local.listen.to_string()),
        (
            "admin.listen",
            text(&running["admin"]["listen"]),
            local.admin_listen.to_string(),
        ),
    ] {
        if was != now {
            changes.push(config::Change {
                line: format!("{path}: {was} -> {now} (needs a restart)"),
                needs_restart: true,
            });
        }
    }
    // The view is built from a snapshot; its background tasks never run: the runtime only
    // drives the (immediately ready) build and is dropped with them.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let generation = running["generation"].as_u64().unwrap_or(0);
    let view = rt.block_on(async {
        backstop::runtime::Snapshot::build(local, generation, &Metrics::new(), None)
            .map(|s| backstop::admin::views::config(&s))
    })?;
    let view = serde_json::to_value(view).context("cannot render the admin view")?;
    drop(rt);
    let skip = ["generation", "sha256", "listen", "admin.listen"];
    changes.extend(
        config::diff_values(running, &view, &skip)
            .into_iter()
            .map(|line| config::Change {
                line,
                needs_restart: false,
            }),
    );
    Ok(changes)
}

/// `GET path` from an admin listener at `url` (`http://host:port`), as JSON.
fn get_json(url: &str, path: &str, token: Option<&str>) -> anyhow::Result<serde_json::Value> {
    use std::io::{Read, Write};
    let authority = url
        .strip_prefix("http://")
        .context("--against takes http://host:port (the admin listener)")?
        .trim_end_matches('/');
    let address = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .with_context(|| format!("cannot resolve {authority}"))?
        .next()
        .with_context(|| format!("cannot resolve {authority}"))?;
    let timeout = Duration::from_secs(5);
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)
        .with_context(|| format!("cannot connect to {authority}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let auth = token.map_or(String::new(), |t| {
        format!("authorization: Bearer {}\r\n", t.trim())
    });
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {authority}\r\naccept: application/json\r\n{auth}connection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream
        .take(64 << 20)
        .read_to_end(&mut response)
        .with_context(|| format!("cannot read the answer of {authority}"))?;
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the admin listener sent no HTTP answer")?;
    let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
    let body = &response[end + 4..];
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        anyhow::bail!(
            "GET {url}{path} answered {status}: {}",
            String::from_utf8_lossy(body).trim()
        );
    }
    if head.contains("transfer-encoding: chunked") {
        anyhow::bail!("GET {url}{path}: chunked answers are not supported");
    }
    serde_json::from_slice(body).with_context(|| format!("GET {url}{path} did not answer JSON"))
}

fn print_issues(path: &Path, error: &ConfigError) {
    let issues = error.issues();
    eprintln!("{}: {} problem(s):", path.display(), issues.len());
    for line in issues {
        eprintln!("  {line}");
    }
}

/// `backstop simulate --format`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    /// For people.
    Text,
    /// One JSON object (`{"config": ..., "compare": ...}`).
    Json,
}

fn simulate(path: &Path, traffic: &Path, compare: Option<&Path>, format: ReportFormat) -> ExitCode {
    let Some(config) = load_config(path) else {
        return ExitCode::from(EXIT_INVALID);
    };
    let other = match compare.map(|p| (p, load_config(p))) {
        Some((_, None)) => return ExitCode::from(EXIT_INVALID),
        Some((_, Some(c))) => Some(c),
        None => None,
    };
    let text = match std::fs::read_to_string(traffic) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", traffic.display());
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let recorded = match backstop::simulate::traffic::parse(&text) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: {e}", traffic.display());
            return ExitCode::from(EXIT_INVALID);
        }
    };
    // The policies take tokio's clock type; nothing here waits on it.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return exit(Err(e.into())),
    };
    let _guard = runtime.enter();
    let report = backstop::simulate::run(&config, &recorded);
    let other = other.map(|c| backstop::simulate::run(&c, &recorded));
    match format {
        ReportFormat::Text => print!(
            "{}",
            backstop::simulate::render_text(&report, other.as_ref())
        ),
        ReportFormat::Json => println!(
            "{}",
            serde_json::json!({ "config": report, "compare": other })
        ),
    }
    ExitCode::SUCCESS
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

/// `backstop slo import FILE`.
fn slo_import(path: &Path) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(EXIT_INVALID);
        }
    };
    match backstop::slo::openslo::import(&text) {
        Ok(specs) => {
            print!("{}", backstop::slo::openslo::render_slos(&specs));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: cannot import: {e}", path.display());
            ExitCode::from(EXIT_INVALID)
        }
    }
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

async fn demo(text: &str, options: backstop::demo::Options) -> anyhow::Result<bool> {
    let demo = match backstop::demo::Demo::launch(text, options).await {
        Ok(demo) => demo,
        Err(backstop::demo::DemoError::Config(e)) => {
            print_issues(Path::new("demo config"), &e);
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
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
