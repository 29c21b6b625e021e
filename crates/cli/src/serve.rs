//! `deputy serve`: the long-running HTTP server, with live reload.
//!
//! On SIGTERM or Ctrl-C it stops accepting connections, gives running
//! tasks `[server] drain_secs` to finish, cancels the rest, and waits for
//! every pending SubagentStop (and queued webhook events) before it exits.

use std::io::Write as _;
use std::net::SocketAddr;

use std::future::IntoFuture as _;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::api::{AppState, router};
use crate::config::Config;
use crate::exit::CliError;
use crate::reload::{Live, Reloader};
use crate::wiring;

/// How long open connections get to finish after the shutdown signal.
const CONNECTION_GRACE: Duration = Duration::from_secs(5);

/// Runs the server until a shutdown signal.
///
/// # Errors
/// Exit code 2 when the address is unusable or the token is missing; 1
/// when the server fails while running.
pub(crate) async fn serve(config: Config, listen: Option<SocketAddr>) -> Result<(), CliError> {
    let listen = listen.unwrap_or(config.server.listen);
    let token = match &config.server.token_env {
        Some(variable) => match std::env::var(variable) {
            Ok(token) if !token.trim().is_empty() => Some(token.trim().to_owned()),
            _ => {
                return Err(CliError::usage(anyhow::anyhow!(
                    "server.token_env names {variable}, which is unset or empty; export the token in it"
                )));
            }
        },
        None => None,
    };
    if token.is_none() && !listen.ip().is_loopback() {
        return Err(CliError::usage(anyhow::anyhow!(
            "refusing to listen on {listen} without a token: other machines could reach it; set [server] token_env, or listen on 127.0.0.1"
        )));
    }
    let stack = wiring::build(&config).map_err(CliError::usage)?;
    let drain = config.server.drain;
    let max_body_bytes = config.server.max_body_bytes;
    let orchestrator = config.orchestrator.clone();
    let reloader = Reloader::start(config, Live::of(&stack));
    let stopping = CancellationToken::new();
    let state = AppState::new(
        stack.runtime.clone(),
        orchestrator,
        stack.hooks.metrics().cloned(),
        reloader.as_ref().map(Reloader::subscribe),
        token,
        stopping.clone(),
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))
        .map_err(CliError::usage)?;
    let address = listener
        .local_addr()
        .context("the listener has no address")
        .map_err(CliError::failed)?;
    // Scripts (and tests) read the address from this line.
    let _ = writeln!(
        std::io::stderr(),
        "deputy serve: listening on http://{address}"
    );
    tracing::info!(%address, "listening");

    let signalled = stopping.clone();
    let server = axum::serve(listener, router(state, max_body_bytes))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            // Event streams end and waits return, so their connections close.
            signalled.cancel();
        })
        .into_future();
    tokio::pin!(server);
    // A server error is returned only after the drain, so running tasks
    // still end and their SubagentStop hooks still fire.
    let served = tokio::select! {
        served = &mut server => served.context("the server failed").map_err(CliError::failed),
        () = async {
            stopping.cancelled().await;
            tokio::time::sleep(CONNECTION_GRACE).await;
        } => {
            tracing::warn!(
                "connections still open {} s after the shutdown signal; closing them",
                CONNECTION_GRACE.as_secs()
            );
            Ok(())
        }
    };

    let _ = writeln!(
        std::io::stderr(),
        "deputy serve: stopping; running tasks get {} s to finish",
        drain.as_secs()
    );
    let report = stack.shutdown(drain).await;
    let _ = writeln!(
        std::io::stderr(),
        "deputy serve: stopped ({})",
        if report.drained {
            "every task finished".to_owned()
        } else {
            format!("{} tasks cancelled at the drain limit", report.cancelled)
        }
    );
    drop(reloader);
    served
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signals) => {
                signals.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; stop the server with Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
