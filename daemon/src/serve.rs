//! The HTTP server's accept loop: at most `server.connections_max` connections at once (a
//! connection past it is answered 503 and closed at once, so that it neither waits in the
//! kernel's queue nor holds a descriptor), and a header-read timeout that also bounds how
//! long a connection may sit idle between requests, so slow, silent and idle clients cannot
//! starve the others.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::DaemonError;
use crate::config::ServerSection;

/// The daemon's TLS side, from `[server] tls_cert` and `tls_key`.
pub(crate) type Tls = tokio_rustls::TlsAcceptor;

/// Reads the certificate chain and key `[server]` names, if it names them: both or neither.
pub(crate) fn tls(server: &ServerSection) -> Result<Option<Tls>, DaemonError> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |key: &str, message: String| DaemonError::Config {
        key: format!("server.{key}"),
        message,
    };
    let (cert, key) = match (&server.tls_cert, &server.tls_key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => return Err(bad("tls_key", "tls_cert needs tls_key too".into())),
        (None, Some(_)) => return Err(bad("tls_cert", "tls_key needs tls_cert too".into())),
    };
    let read = |key: &str, path: &Path| {
        std::fs::read(path).map_err(|e| bad(key, format!("{}: {e}", path.display())))
    };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read("tls_cert", cert)?)
            .collect::<Result<_, _>>()
            .map_err(|e| bad("tls_cert", format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(bad(
            "tls_cert",
            format!("{}: no CERTIFICATE in it", cert.display()),
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(&read("tls_key", key)?)
        .map_err(|e| bad("tls_key", format!("{}: {e}", key.display())))?;
    // ring, not aws-lc-rs: it builds without cmake. rustls marks ring's provider deprecated
    // for its lack of post-quantum key exchange, which TLS 1.3 with X25519 does without.
    #[allow(deprecated)]
    let provider = tokio_rustls::rustls::crypto::ring::default_provider();
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls_cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            bad(
                "tls_key",
                format!("the key does not go with the certificate: {e}"),
            )
        })?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// How long a stopping daemon waits for open requests to finish.
const SHUTDOWN_GRACE_MS: u64 = 5_000;
/// File descriptors the daemon needs besides its connections (database, hosts, hooks).
const FDS_RESERVED: usize = 256;

/// Serves `app` on `listener` until `shutdown` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerSection,
    tls: Option<Tls>,
    mut shutdown: watch::Receiver<bool>,
) {
    warn_if_fds_short(limits.connections_max);
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let header_timeout = Duration::from_millis(limits.header_read_timeout_ms);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors, most likely: wait for some to close instead of spinning.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refuse(stream, limits.connections_max);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let stop = shutdown.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_connection(stream, service, header_timeout, stop).await,
                // The handshake is bounded like the headers: a client that opens a connection
                // and says nothing holds its slot no longer than one that sends no headers.
                Some(tls) => match tokio::time::timeout(header_timeout, tls.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(stream, service, header_timeout, stop).await,
                    Ok(Err(error)) => tracing::debug!(%error, "a TLS handshake failed"),
                    Err(_) => tracing::debug!("a TLS handshake took too long"),
                },
            }
        });
    }
    // Every connection gives its slot back when it ends; wait for them, within reason.
    let all = u32::try_from(limits.connections_max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(
        Duration::from_millis(SHUTDOWN_GRACE_MS),
        slots.acquire_many(all),
    )
    .await;
}

/// Serves HTTP/1.1 on one connection (plain or TLS) until it ends or the daemon stops.
async fn serve_connection<S>(
    stream: S,
    service: TowerToHyperService<Router>,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Tells a connection past the limit so, without waiting for it to be read.
fn refuse(stream: TcpStream, connections_max: usize) {
    let body = format!(
        "{{\"error\":\"the daemon has {connections_max} connections open, its limit \
         (server.connections_max): try again shortly\"}}"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Retry-After: 1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // A full send buffer just loses the answer: the close still tells the client.
    let _ = stream.try_write(answer.as_bytes());
    tracing::debug!("connection refused: at the connection limit");
}

/// Warns when the process may run out of descriptors before it reaches `connections_max`.
fn warn_if_fds_short(connections_max: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(soft) = soft
        && soft < connections_max + FDS_RESERVED
    {
        tracing::warn!(
            open_files_max = soft,
            connections_max,
            "the open-files limit is below server.connections_max plus what the daemon needs; \
             raise it (ulimit -n) or lower connections_max"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_takes_a_certificate_and_its_key_or_neither() {
        let err = |server: ServerSection| tls(&server).err().map(|e| e.to_string());
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(tls(&ServerSection::default()).unwrap().is_none());
        let e = err(ServerSection {
            tls_cert: Some(empty.clone()),
            ..ServerSection::default()
        })
        .unwrap();
        assert!(e.contains("server.tls_key"), "{e}");
        let e = err(ServerSection {
            tls_cert: Some(empty.clone()),
            tls_key: Some(dir.path().join("missing.pem")),
            ..ServerSection::default()
        })
        .unwrap();
        assert!(
            e.contains("server.tls_cert") && e.contains("no CERTIFICATE"),
            "{e}"
        );
    }
}
