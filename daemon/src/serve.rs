//! The HTTP server's accept loop: at most `server.connections_max` connections at once (a
//! connection past it is answered 503 and closed at once, so that it neither waits in the
//! kernel's queue nor holds a descriptor), and a header-read timeout that also bounds how
//! long a connection may sit idle between requests, so slow, silent and idle clients cannot
//! starve the others.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::config::ServerSection;

/// How long a stopping daemon waits for open requests to finish.
const SHUTDOWN_GRACE_MS: u64 = 5_000;
/// File descriptors the daemon needs besides its connections (database, hosts, hooks).
const FDS_RESERVED: usize = 256;

/// Serves `app` on `listener` until `shutdown` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerSection,
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
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
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
