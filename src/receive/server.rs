//! Connections: the listener, TLS handshakes, HTTP/1.1, and the limits on clients.
//!
//! - At most `max_connections` connections are served at once: a permit is taken before
//!   `accept`, so past the limit new clients wait in the kernel's backlog instead of costing
//!   memory here.
//! - A TLS handshake and a request's headers must each complete within `request_timeout`
//!   (hyper's `header_read_timeout`); the body has its own deadline in `http`.
//! - Shutdown: stop accepting, ask every connection to finish its in-flight request and
//!   close, and wait for them up to [`DRAIN_DEADLINE`]. A batch being written finishes its
//!   write either way (it runs in its own task).

use super::http::{handle, Limits};
use super::ingest::{Ingest, Peer};
use super::read::ReadApi;
use super::store::ArchiveBackend;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long shutdown waits for open connections.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (such as running out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub struct Server<A> {
    pub listener: TcpListener,
    pub tls: Option<TlsAcceptor>,
    pub ingest: Arc<Ingest<A>>,
    pub limits: Limits,
    pub max_connections: usize,
    /// The read API, when `[receiver.access]` is configured.
    pub reads: Option<Arc<ReadApi>>,
}

impl<A: ArchiveBackend> Server<A> {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then drains.
    pub async fn serve(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(self.max_connections));
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let conn = Connection {
                ingest: self.ingest.clone(),
                limits: self.limits,
                reads: self.reads.clone(),
                shutdown: shutdown.clone(),
            };
            let tls = self.tls.clone();
            tracker.spawn(async move {
                let _permit = permit;
                let _ = stream.set_nodelay(true);
                match tls {
                    None => {
                        let who = Peer {
                            addr: Some(peer),
                            cert: None,
                        };
                        conn.serve(TokioIo::new(stream), who).await
                    }
                    Some(acceptor) => {
                        let handshake = tokio::time::timeout(
                            conn.limits.request_timeout,
                            acceptor.accept(stream),
                        );
                        match handshake.await {
                            Ok(Ok(tls_stream)) => {
                                let cert = tls_stream
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .map(|c| c.clone().into_owned());
                                let who = Peer {
                                    addr: Some(peer),
                                    cert,
                                };
                                conn.serve(TokioIo::new(tls_stream), who).await
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }
        drop(self.listener);
        tracker.close();
        if tokio::time::timeout(DRAIN_DEADLINE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = tracker.len(),
                "connections still open after the drain deadline"
            );
        }
    }
}

struct Connection<A> {
    ingest: Arc<Ingest<A>>,
    limits: Limits,
    reads: Option<Arc<ReadApi>>,
    shutdown: CancellationToken,
}

impl<A: ArchiveBackend> Connection<A> {
    async fn serve<I>(self, io: I, peer: Peer)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (ingest, limits, reads) = (self.ingest, self.limits, self.reads);
        let addr = peer.addr;
        let peer = Arc::new(peer);
        let svc = hyper::service::service_fn(move |req| {
            handle(ingest.clone(), limits, reads.clone(), peer.clone(), req)
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.request_timeout);
        let conn = builder.serve_connection(io, svc);
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = self.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(peer = ?addr, error = %e, "connection ended with an error");
        }
    }
}
