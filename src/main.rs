//! The `imagegate` command: parse flags, load config, start telemetry, bind, call the library.
//! The admin commands (`keys`, `teams`, `usage`, …) are in `cli`, a client of the admin API.

mod cli;

#[cfg(feature = "demo")]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use imagegate::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "imagegate",
    version,
    about = "An OpenAI-compatible gateway for image generation"
)]
struct Cli {
    /// `--url` and `--admin-key`, for the admin commands; accepted in any position.
    #[command(flatten)]
    conn: cli::Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, short, default_value = "config/imagegate.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file and exit.
    CheckConfig { config: PathBuf },
    /// Run the upstream simulator.
    #[cfg(feature = "demo")]
    Sim {
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
        /// The upstream key the simulator accepts.
        #[arg(long, env = "IMAGEGATE_SIM_API_KEY", default_value = "sk-sim-upstream")]
        api_key: String,
        /// Latency multiplier: 1.0 is the platform's real latencies.
        #[arg(long, default_value_t = 1.0)]
        time_scale: f64,
        /// Base URL for result file links (default: the listen address).
        #[arg(long)]
        public_base_url: Option<String>,
    },
    /// Run the simulator and the gateway together with a ready config.
    #[cfg(feature = "demo")]
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:0")]
        sim_listen: SocketAddr,
        #[arg(long, default_value_t = 0.05)]
        time_scale: f64,
    },
    /// An MCP server on stdio (for Cursor, Claude Code, Codex) with image tools that call a
    /// running gateway with a client key.
    Mcp {
        /// The gateway's base URL; a trailing `/v1` is accepted.
        #[arg(long, env = "IMAGEGATE_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The environment variable holding the client key.
        #[arg(long, default_value = "IMAGEGATE_API_KEY")]
        api_key_env: String,
    },
    /// Print the SHA-256 of a client key, for `key_sha256` in the config.
    HashKey { key: String },
    /// Exit 0 when the gateway answers `url` with 200 within 3 s, else 1 (a container's
    /// HEALTHCHECK).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
    /// Manage client keys through the running gateway's admin API.
    Keys {
        #[command(subcommand)]
        command: cli::KeysCommand,
    },
    /// Manage teams through the running gateway's admin API.
    Teams {
        #[command(subcommand)]
        command: cli::TeamsCommand,
    },
    /// Usage report from the spend ledger (JSON, or CSV with --csv).
    Usage {
        #[command(flatten)]
        args: cli::UsageArgs,
    },
    /// Current spend against budgets, per key and team.
    Spend,
    /// The upstream key pool: ids, weights, benched or not.
    UpstreamKeys,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imagegate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let conn = cli.conn;
    let admin = |call: cli::CallSpec| -> anyhow::Result<()> {
        let text = runtime()?.block_on(cli::run(&conn, call))?;
        let mut out = std::io::stdout().lock();
        std::io::Write::write_all(&mut out, text.as_bytes())?;
        Ok(())
    };
    match cli.command {
        Command::Keys { command } => admin(cli::keys(command)),
        Command::Teams { command } => admin(cli::teams(command)),
        Command::Usage { args } => admin(cli::usage(args)),
        Command::Spend => admin(cli::get("/admin/spend")),
        Command::UpstreamKeys => admin(cli::get("/admin/upstream-keys")),
        Command::Healthcheck { url } => runtime()?.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(3))
                .build()?;
            let status = client.get(&url).send().await?.status();
            anyhow::ensure!(status.is_success(), "{url} answered {status}");
            Ok(())
        }),
        Command::Mcp { url, api_key_env } => {
            // stdout carries the protocol: logs go to stderr, warnings only by default.
            let _logs = init_tracing(LogFormat::Human, "warn");
            let key = std::env::var(&api_key_env)
                .with_context(|| format!("the client key: set {api_key_env}"))?;
            let backend = imagegate::mcp::Backend::remote(&url, key)?;
            runtime()?.block_on(imagegate::mcp::serve_stdio(backend))
        }
        Command::CheckConfig { config } => {
            Config::load(&config)?;
            eprintln!("{}: ok", config.display());
            Ok(())
        }
        Command::HashKey { key } => {
            let min = imagegate::config::MIN_CLIENT_KEY_LEN;
            if key.len() < min {
                anyhow::bail!(
                    "a client key must be at least {min} characters (as `key` in [[keys]] requires)"
                );
            }
            let mut out = std::io::stdout().lock();
            std::io::Write::write_all(
                &mut out,
                format!("{}\n", hex::encode(imagegate::auth::digest(&key))).as_bytes(),
            )?;
            Ok(())
        }
        Command::Serve { config } => {
            let mut config = Config::load(&config)?;
            let _logs = init_tracing(config.logging.format, &config.logging.filter);
            // Jobs, keys and the ledger survive a restart unless memory was asked for.
            if config.data.dir.is_none() && !config.data.in_memory {
                let dir = std::path::PathBuf::from("imagegate-data");
                tracing::info!(dir = %dir.display(), "no data.dir configured: using ./imagegate-data");
                config.data.dir = Some(dir);
            }
            // The runtime is dropped before the log writer, so nothing logged while it shuts
            // down is lost.
            let rt = runtime()?;
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(config.server.listen)
                    .await
                    .with_context(|| format!("binding {}", config.server.listen))?;
                let shutdown = shutdown_signal();
                tracing::info!(addr = %listener.local_addr()?, "imagegate listening");
                imagegate::serve(config, listener, shutdown).await
            })
        }
        #[cfg(feature = "demo")]
        Command::Sim {
            listen,
            api_key,
            time_scale,
            public_base_url,
        } => {
            let _logs = init_tracing(LogFormat::Human, "info");
            // The runtime is dropped before the log writer, so nothing logged while it shuts
            // down is lost.
            let rt = runtime()?;
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                tracing::info!(addr = %listener.local_addr()?, "simulator listening");
                let config = imagegate_sim::SimConfig {
                    api_key,
                    public_base_url,
                    time_scale,
                };
                imagegate_sim::serve(config, listener, shutdown_signal()).await?;
                Ok(())
            })
        }
        #[cfg(feature = "demo")]
        Command::Demo {
            listen,
            sim_listen,
            time_scale,
        } => {
            let _logs = init_tracing(LogFormat::Human, "info");
            let opts = imagegate::demo::DemoOptions {
                listen,
                sim_listen,
                time_scale,
            };
            let rt = runtime()?;
            rt.block_on(async { imagegate::demo::run(opts, shutdown_signal()).await })
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Logs go to stderr through a writer thread, so a request never waits on a slow terminal or
/// pipe (nothing is dropped: a full buffer waits). The thread writes the lines waiting for it
/// together and flushes whenever none is left, so a busy gateway makes one `write` per batch of
/// lines, not one per line. Keep the guard: dropping it flushes the rest. `RUST_LOG` overrides
/// the configured filter.
fn init_tracing(format: LogFormat, filter: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

/// Resolves on SIGINT (ctrl-c) or SIGTERM. The handlers are installed now, before the caller
/// logs that it listens: a signal that arrives while the gateway starts is a clean shutdown too,
/// never the default (an abrupt exit).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = int.recv() => {},
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_flags_are_accepted_in_any_position() {
        let positions: [&[&str]; 3] = [
            &[
                "imagegate",
                "--admin-key",
                "sk-admin-x",
                "--url",
                "http://gw",
                "keys",
                "list",
            ],
            &[
                "imagegate",
                "keys",
                "--admin-key",
                "sk-admin-x",
                "--url",
                "http://gw",
                "list",
            ],
            &[
                "imagegate",
                "keys",
                "list",
                "--admin-key",
                "sk-admin-x",
                "--url",
                "http://gw",
            ],
        ];
        for args in positions {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(
                cli.conn.admin_key.as_deref(),
                Some("sk-admin-x"),
                "{args:?}"
            );
            assert_eq!(cli.conn.url, "http://gw", "{args:?}");
            assert!(matches!(
                cli.command,
                Command::Keys {
                    command: cli::KeysCommand::List
                }
            ));
        }
        let cli =
            Cli::try_parse_from(["imagegate", "teams", "delete", "design", "--force"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Teams {
                command: cli::TeamsCommand::Delete { force: true, .. }
            }
        ));
    }
}
