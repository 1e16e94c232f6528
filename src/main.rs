//! The `grokforge` binary: parses the command line and the configuration, sets up logging,
//! and hands over to the libraries. Nothing else lives here.

mod datasets_cmd;
mod jobs_cmd;
mod models_cmd;
mod serve;
mod train_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use grokforge::client;
use grokforge_config::Settings;

#[derive(Parser)]
#[command(
    name = "grokforge",
    version,
    about = "Train small language models with GrokFast"
)]
struct Cli {
    /// Log format on stderr; the level comes from RUST_LOG (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: the supervised services and the HTTP gateway.
    Serve(ServeArgs),
    /// Train locally, without a server: a phase recipe with progress bars, models to --out.
    Train(Box<train_cmd::TrainArgs>),
    /// The model registry of the local data dir, or of a node with --server: list, show,
    /// export, delete, gc.
    Models(models_cmd::ModelsArgs),
    /// Training jobs on a running node: list, show, cancel, watch.
    Jobs(jobs_cmd::JobsArgs),
    /// Datasets on a running node: upload, list, show, delete.
    Datasets(datasets_cmd::DatasetsArgs),
    /// Print the HTTP API's OpenAPI 3.1 document (what a node serves at `GET /openapi.json`).
    Openapi,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (defaults → this file → GROKFORGE__SECTION__KEY variables).
    #[arg(long, env = "GROKFORGE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port (printed as `listening on http://…`).
    #[arg(long)]
    bind: Option<std::net::SocketAddr>,
    /// Where the node keeps its database, artifacts and exports.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    // First, while the process has one thread: training steps reuse the buffers they free.
    let heap = grokforge_training_core::allocator::keep_freed_memory();
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    tracing::debug!(?heap, "heap policy");
    // Fault injection for the crash-at-any-point checks (RELIABILITY.md).
    if let Some(spec) = std::env::var_os("GROKFORGE_CRASH_AT") {
        match grokforge_config::crashpoint::parse(&spec.to_string_lossy()) {
            Ok(plan) => {
                tracing::warn!(
                    ?plan,
                    "GROKFORGE_CRASH_AT: this process signals itself there"
                );
                grokforge_config::crashpoint::arm(plan);
            }
            Err(error) => {
                eprintln!("grokforge: GROKFORGE_CRASH_AT: {error}");
                return ExitCode::from(2);
            }
        }
    }
    let result = match cli.command {
        Command::Train(args) => train_cmd::run(*args),
        Command::Models(args) => models_cmd::run(args),
        Command::Jobs(args) => jobs_cmd::run(args),
        Command::Datasets(args) => datasets_cmd::run(args),
        Command::Openapi => {
            println!("{}", grokforge_gateway::openapi::json());
            Ok(())
        }
        Command::Serve(args) => load_settings(&args).and_then(|settings| {
            tokio::runtime::Runtime::new()
                .context("cannot start the async runtime")?
                .block_on(serve::run(settings))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("grokforge: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Layers the settings, then lets the command-line flags override the file and environment.
fn load_settings(args: &ServeArgs) -> anyhow::Result<Settings> {
    let mut settings = Settings::load(args.config.as_deref(), std::env::vars())?;
    if let Some(bind) = args.bind {
        settings.gateway.bind = bind;
    }
    if let Some(data_dir) = &args.data_dir {
        settings.node.data_dir = data_dir.clone();
    }
    settings.validate()?;
    Ok(settings)
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
