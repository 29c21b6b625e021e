//! `deputy`: run LLM sub-agents in the background.
//!
//! The binary wires every crate from one TOML file (see
//! `config.toml.example`): `deputy run` runs one orchestration, `deputy
//! config check` and `deputy config example` help write the file, and
//! `deputy demo` drives the registry alone. With no config file at all,
//! `deputy run` uses the built-in offline config on the `scripted`
//! provider and says so.
//!
//! Exit codes: 0 success, 1 a failed run, 2 bad usage or config.

mod api;
mod bench;
mod bench_load;
mod chat;
mod config;
mod config_cmd;
mod demo;
mod exit;
mod reload;
mod run_cmd;
mod serve;
mod toml_error;
mod wiring;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{CONFIG_ENV, Config, DEFAULT_FILE};
use crate::exit::CliError;
use crate::reload::{Live, Reloader};

#[derive(Debug, Parser)]
#[command(
    name = "deputy",
    version,
    about = "Run LLM sub-agents in the background"
)]
struct Cli {
    /// The config file (default: ./deputy.toml, then the file named by
    /// DEPUTY_CONFIG; with neither, the built-in offline config).
    #[arg(short, long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// More logging on stderr: -v for info, -vv for debug (RUST_LOG
    /// overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// How log lines look.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one orchestration: the answer streams to stdout, sub-agent
    /// progress and a summary (tasks, tokens, cost, time) go to stderr.
    Run {
        /// What to ask the orchestrator.
        prompt: String,
        /// The agent that orchestrates (default: `[agent] name`).
        #[arg(long, value_name = "NAME")]
        agent: Option<String>,
        /// Print one JSON document (answer, report, cost) instead of
        /// streaming the answer.
        #[arg(long)]
        json: bool,
    },
    /// An interactive session: each line is a prompt to the orchestrator;
    /// background tasks keep running between prompts. Commands: /tasks,
    /// /wait ID, /stop ID, /settings, /help, /quit.
    Chat,
    /// Serve the HTTP API (tasks, runs, settings, events, metrics) until
    /// SIGTERM or Ctrl-C, reloading the config live.
    Serve {
        /// The address to listen on (default: `[server] listen`).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Measure a scenario through the real stack (scripted provider, every
    /// built-in hook) beside a bare Semaphore baseline, and print the
    /// figures (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// Check or start a config file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Launch simulated background tasks through the registry and show the
    /// cap, the queue and exactly-once delivery at work (offline).
    Demo {
        /// How many background tasks to launch.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
        tasks: u16,
        /// How many may run at once (`[agent.subagents] max_concurrent`).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
        cap: u16,
        /// Simulated work time of each task, in milliseconds.
        #[arg(long, default_value_t = 300)]
        work_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a config: print the effective settings (exit 0) or every
    /// problem (exit 2).
    Check {
        /// The file to check (default: as for every command).
        path: Option<PathBuf>,
    },
    /// Print a complete, commented config that runs offline.
    Example,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot start the async runtime: {error}"
            );
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report(),
    }
}

fn init_logging(verbose: u8, format: LogFormat) {
    let default = match verbose {
        // deputy's own notices (a config reload) show by default.
        0 => "warn,deputy=info",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn dispatch(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Run {
            prompt,
            agent,
            json,
        } => {
            let config = load_config(cli.config.as_deref(), true)?;
            let agent = agent.unwrap_or_else(|| config.orchestrator.clone());
            if !config.agents.contains_key(&agent) {
                return Err(CliError::usage(anyhow::anyhow!(
                    "--agent {agent}: there is no [agents.{agent}]; known agents: {}{}",
                    config.agents.keys().cloned().collect::<Vec<_>>().join(", "),
                    config::did_you_mean(&agent, config.agents.keys())
                )));
            }
            let stack = wiring::build(&config).map_err(CliError::usage)?;
            // Limits can be tuned while the run goes on.
            let reloader = Reloader::start(config, Live::of(&stack));
            run_cmd::run(stack, reloader, &agent, &prompt, json).await
        }
        Command::Config { command } => match command {
            ConfigCommand::Example => config_cmd::example(),
            ConfigCommand::Check { path } => {
                let path = path.or(cli.config);
                let config = load_config(path.as_deref(), false)?;
                config_cmd::check(&config)
            }
        },
        Command::Chat => {
            let config = load_config(cli.config.as_deref(), true)?;
            chat::chat(config).await
        }
        Command::Serve { listen } => {
            let config = load_config(cli.config.as_deref(), true)?;
            serve::serve(config, listen).await
        }
        Command::Bench(args) => bench::run(args).await.map_err(CliError::failed),
        Command::Demo {
            tasks,
            cap,
            work_ms,
        } => demo::demo(tasks, usize::from(cap), Duration::from_millis(work_ms))
            .await
            .map_err(CliError::failed),
    }
}

/// Finds and loads the config; with no file at all, the built-in offline
/// config, announced on stderr when `announce` is set.
fn load_config(flag: Option<&Path>, announce: bool) -> Result<Config, CliError> {
    let env = std::env::var(CONFIG_ENV).ok();
    let path = config::locate(flag, env.as_deref(), Path::new(DEFAULT_FILE).is_file())?;
    match path {
        Some(path) => Ok(config::load(&path)?),
        None => {
            if announce {
                let _ = writeln!(
                    std::io::stderr(),
                    "deputy: no config file (no -c, no ./{DEFAULT_FILE}, no {CONFIG_ENV}): running the built-in offline demo on the scripted provider; `deputy config example > {DEFAULT_FILE}` starts your own"
                );
            }
            Ok(config::built_in()?)
        }
    }
}
