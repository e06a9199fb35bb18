//! Running the HTTP(S) server with graceful shutdown on SIGTERM and SIGINT.
//!
//! Plain HTTP is for loopback (a TLS-terminating proxy on the same machine, or tests); anything
//! that leaves the machine carries staff tokens, personal data and per-card SCP03 keys, so the
//! server either terminates TLS itself (`--tls-cert`/`--tls-key`) or refuses to listen there.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::AppState;

/// How long a client may take to finish its TLS handshake before its connection is dropped
/// (a connection that never speaks would otherwise hold a task forever).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long requests in flight may run on after a shutdown signal before their connections
/// are closed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `state` on `listener` until SIGTERM or SIGINT; requests in flight finish first, then
/// the database pool is closed. With `tls`, every connection is TLS.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<()> {
    serve_until(state, listener, tls, shutdown_signal()).await
}

/// Serves until `shutdown` completes (tests pass their own future).
pub async fn serve_until(
    state: AppState,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    match tls {
        None => {
            tracing::info!(%addr, "issuance server listening (HTTP)");
            axum::serve(listener, crate::app(state.clone()))
                .with_graceful_shutdown(shutdown)
                .await
                .context("serving HTTP")?;
        }
        Some(config) => {
            tracing::info!(%addr, "issuance server listening (HTTPS)");
            serve_tls(state.clone(), listener, config, shutdown).await;
        }
    }
    state.db.close().await;
    tracing::info!("issuance server stopped");
    Ok(())
}

/// The accept loop for HTTPS: axum's own `serve` speaks plain TCP only, so each connection is
/// wrapped in TLS here and handed to hyper with the same router; shutdown stops accepting and
/// lets the open connections finish their requests, as `axum::serve` does.
async fn serve_tls(
    state: AppState,
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let app = crate::app(state);
    let graceful = GracefulShutdown::new();
    // A connection still in its handshake at shutdown holds a watcher but has no request to
    // finish: this tells it to give up instead of keeping the stop waiting for its timeout.
    let (stopping, stop_seen) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        let mut stop_seen = stop_seen.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
            let stream = tokio::select! {
                done = handshake => match done {
                    Ok(Ok(stream)) => stream,
                    // A port scan, a plain-HTTP client or a client that distrusts our
                    // certificate: nothing to answer, and not worth more than a debug line.
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
                _ = stop_seen.wait_for(|stop| *stop) => return,
            };
            let service = TowerToHyperService::new(app.map_request(
                |r: axum::http::Request<hyper::body::Incoming>| r.map(axum::body::Body::new),
            ));
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still running {DRAIN_TIMEOUT:?} after shutdown; closing them");
    }
}

/// The TLS settings for `--tls-cert` (PEM: the server certificate, then its chain) and
/// `--tls-key` (PEM: its private key, PKCS#8, SEC1 or PKCS#1). TLS 1.3 and 1.2, HTTP/2 and
/// HTTP/1.1, on ring.
pub fn tls_config(cert_pem: &Path, key_pem: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let cert_text = std::fs::read(cert_pem)
        .with_context(|| format!("cannot read the TLS certificate {}", cert_pem.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_text)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate file", cert_pem.display()))?;
    if chain.is_empty() {
        bail!(
            "{} holds no certificate (expected -----BEGIN CERTIFICATE-----)",
            cert_pem.display()
        );
    }
    let key_text = std::fs::read(key_pem)
        .with_context(|| format!("cannot read the TLS key {}", key_pem.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_text).with_context(|| {
        format!(
            "{} holds no private key (expected a PEM PRIVATE KEY block)",
            key_pem.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .with_context(|| {
            format!(
                "the key in {} does not belong to the certificate in {}",
                key_pem.display(),
                cert_pem.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Refuses to serve plain HTTP on an address other machines can reach.
pub fn check_plain_http(listen: SocketAddr) -> Result<()> {
    if listen.ip().is_loopback() {
        return Ok(());
    }
    bail!(
        "refusing to serve plain HTTP on {listen}: staff tokens, personal data and card keys \
         would cross the network in clear. Give --tls-cert and --tls-key (PEM files) to serve \
         HTTPS there, or listen on 127.0.0.1 behind a TLS-terminating proxy on this machine"
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback() {
        assert!(check_plain_http("127.0.0.1:8080".parse().unwrap()).is_ok());
        assert!(check_plain_http("[::1]:8080".parse().unwrap()).is_ok());
        let e = check_plain_http("0.0.0.0:8080".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("--tls-cert"), "{e}");
        assert!(check_plain_http("192.168.1.10:443".parse().unwrap()).is_err());
    }

    #[test]
    fn tls_files_are_checked_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&cert, issued.cert.pem()).unwrap();
        std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();
        tls_config(&cert, &key).unwrap();

        // Missing file, not PEM, a key that belongs to another certificate.
        let e = tls_config(&dir.path().join("none.pem"), &key).unwrap_err();
        assert!(
            format!("{e:#}").contains("cannot read the TLS certificate"),
            "{e:#}"
        );
        std::fs::write(&cert, "not a certificate").unwrap();
        let e = tls_config(&cert, &key).unwrap_err();
        assert!(format!("{e:#}").contains("holds no certificate"), "{e:#}");
        std::fs::write(&cert, issued.cert.pem()).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&key, other.signing_key.serialize_pem()).unwrap();
        let e = tls_config(&cert, &key).unwrap_err();
        assert!(format!("{e:#}").contains("does not belong"), "{e:#}");
        std::fs::write(&key, issued.cert.pem()).unwrap();
        let e = tls_config(&cert, &key).unwrap_err();
        assert!(format!("{e:#}").contains("holds no private key"), "{e:#}");
    }
}
