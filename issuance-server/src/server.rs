//! Running the HTTP server with graceful shutdown on SIGTERM and SIGINT.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use crate::AppState;

/// Serves `state` on `listener` until SIGTERM or SIGINT; requests in flight finish first, then
/// the database pool is closed.
pub async fn serve(state: AppState, listener: TcpListener) -> Result<()> {
    serve_until(state, listener, shutdown_signal()).await
}

/// Serves until `shutdown` completes (tests pass their own future).
pub async fn serve_until(
    state: AppState,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, "issuance server listening");
    axum::serve(listener, crate::app(state.clone()))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")?;
    state.db.close().await;
    tracing::info!("issuance server stopped");
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT: shutting down"),
        _ = terminate => tracing::info!("SIGTERM: shutting down"),
    }
}
