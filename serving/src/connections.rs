//! Accepting connections with bounds: a connection limit below the process's file limit, a
//! deadline on every request's headers (which is also the idle keep-alive timeout), and, when
//! the limit is reached, the oldest connection with no request in progress makes room.
//!
//! Without them, a thousand clients that connect and say nothing (or half a header) hold a
//! thousand file descriptors for ever: the server stops answering anything, `/healthz`
//! included, and the registry poll fails with "Too many open files". Evicting idle connections
//! rather than refusing new ones means silent connections cannot starve real requests (nginx and
//! Envoy do the same under connection pressure). Body deadlines are the handlers' (`api`).

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Body, extract::Request};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::Notify};
use tower::ServiceExt as _;

use crate::{metrics, throttle::Throttle};

/// How the server treats connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// The most connections open at once.
    pub max_connections: usize,
    /// How long a client has to send a request's headers, counted from the connection or the
    /// end of its previous request: also how long an idle connection is kept.
    pub header_timeout: Duration,
}

/// The open connections, oldest first.
#[derive(Debug)]
struct Open {
    limit: usize,
    next: AtomicUsize,
    by_age: Mutex<BTreeMap<usize, Arc<Connection>>>,
}

/// One open connection: its requests in progress, and a way to close it.
#[derive(Debug, Default)]
struct Connection {
    busy: AtomicUsize,
    close: Notify,
}

/// A place among the open connections, given back when dropped.
struct Place {
    id: usize,
    open: Arc<Open>,
    connection: Arc<Connection>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.open.by_age.lock().expect("the connection lock is never poisoned").remove(&self.id);
    }
}

impl Open {
    /// A place for a new connection. At the limit, the oldest connection without a request in
    /// progress is closed to make room; when every connection is busy, none (the new one waits
    /// for no one: it is closed at once).
    fn admit(self: &Arc<Self>) -> Option<Place> {
        let mut by_age = self.by_age.lock().expect("the connection lock is never poisoned");
        if by_age.len() >= self.limit {
            let idle = by_age.iter().find(|(_, c)| c.busy.load(Ordering::Acquire) == 0).map(|(id, _)| *id);
            let evicted = by_age.remove(&idle?).expect("found just now");
            // A stored permit: the connection closes even if its task is not waiting yet.
            evicted.close.notify_one();
            metrics::connection_closed("evicted");
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection::default());
        by_age.insert(id, Arc::clone(&connection));
        Some(Place { id, open: Arc::clone(self), connection })
    }
}

/// Counts a request in progress on its connection until dropped.
struct Busy(Arc<Connection>);

impl Busy {
    fn start(connection: &Arc<Connection>) -> Self {
        connection.busy.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(connection))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

static ACCEPT_FAILED: Throttle = Throttle::every_ms(10_000);

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting, closes idle
/// connections and waits for the requests in progress.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let open =
        Arc::new(Open { limit: limits.max_connections.max(1), next: AtomicUsize::new(0), by_age: Mutex::default() });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, typically: the limit above keeps well below it,
                    // but other files count too. Wait a little rather than spin.
                    metrics::connection_closed("accept_failed");
                    if let Some(skipped) = ACCEPT_FAILED.allow() {
                        tracing::warn!(error = %e, skipped, "cannot accept a connection");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(place) = open.admit() else {
            metrics::connection_closed("refused");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Arc::clone(&place.connection);
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let busy = Busy::start(&connection);
            let router = router.clone();
            async move {
                let _busy = busy;
                router.oneshot(request.map(Body::new)).await
            }
        });
        let served = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            tokio::select! {
                // A client's I/O error or a header deadline missed ends the connection; there is
                // no one to tell.
                _ = served => {}
                () = place.connection.close.notified() => {}
            }
            drop(place);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The default connection limit: the file limit less room for everything else the process opens
/// (Redis, Kafka, the registry, ONNX Runtime's files), between 16 and 100,000.
pub fn default_max_connections() -> usize {
    let soft =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    (soft.saturating_sub(256) as usize).clamp(16, 100_000)
}

/// Raises the process's soft file limit to its hard limit (the soft default, 1,024, is far
/// below what a server needs); returns the limit in force.
pub fn raise_file_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard.max(soft))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_limit_the_oldest_idle_connection_makes_room() {
        let open = Arc::new(Open { limit: 3, next: AtomicUsize::new(0), by_age: Mutex::default() });
        let places: Vec<Place> = (0..3).map(|_| open.admit().unwrap()).collect();
        let _busy = Busy::start(&places[0].connection);
        let fourth = open.admit().expect("an idle connection makes room");
        assert_eq!(open.by_age.lock().unwrap().keys().copied().collect::<Vec<_>>(), [0, 2, 3], "1 was the oldest idle");
        let _also_busy = [Busy::start(&places[2].connection), Busy::start(&fourth.connection)];
        assert!(open.admit().is_none(), "every connection busy: no room");
        drop(places);
        assert_eq!(open.by_age.lock().unwrap().len(), 1, "closed connections give their place back");
    }
}
