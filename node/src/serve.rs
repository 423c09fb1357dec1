//! The HTTP accept loop: a bounded number of connections, a deadline for each request's
//! headers (which is also how long an idle keep-alive connection stays open), and a graceful
//! shutdown that lets in-flight requests finish.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower_service::Service;

/// How long a shutdown waits for open connections to finish their requests.
pub const SHUTDOWN_DRAIN_MS: u64 = 10_000;
/// How long a shutdown lets open connections end by themselves before it closes the idle
/// ones. A client may have sent its next request on a keep-alive connection just as the
/// shutdown came: the request is in the socket, not read yet, so hyper counts the connection
/// as idle, and closing it then loses the request (found while chasing lost requests in a
/// rolling restart, benches/RESULTS.md, session 25; the test below loses one without the
/// notice). Within the notice each such request is answered, with `Connection: close`, and
/// its connection ends; only a connection idle for the whole notice is closed under its
/// client.
pub const SHUTDOWN_CLOSE_NOTICE_MS: u64 = 1_000;

/// Limits of the accept loop (`[limits] http_*`).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub connections_max: usize,
    pub header_read_timeout: Duration,
}

/// Serve `router` on `listener` until `shutdown` resolves, then drain. Once `closing` is set
/// (a stop began; `shutdown` resolves later, after the node handed its leaderships away)
/// every response says `Connection: close` and ends its connection: a client then opens a
/// new one for its next request instead of reusing one this node is about to close, which
/// HTTP/1.1 cannot do safely (a request sent as the server closes an idle connection is lost
/// in flight, and a POST is not retried).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    closing: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let (stop_tx, stop_rx) = watch::channel(false);
    let conns = Connections { router, limits, closing: closing.clone(), slots: slots.clone(), stop: stop_rx };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            // Shutdown first: what is still queued is taken after the loop, in one pass.
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => conns.take(stream, client),
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment instead of spinning.
                    tracing::warn!(target: "kalamdb_http", "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    // From here every response ends its connection, even where no stop was announced.
    closing.store(true, Ordering::SeqCst);
    // Connections the kernel completed but this loop has not taken are reset when the
    // listener closes, with whatever request they carry. Clients that reconnect after each
    // `Connection: close` keep some there nearly all the time (a rolling restart under 64
    // clients saw about one reset a stop, benches/RESULTS.md, session 25), so every one queued
    // now is taken and served first: only one arriving between the last accept and the close
    // can still be reset. Bounded by the connection cap, so a connect flood cannot hold the
    // shutdown here.
    if let Ok(queued) = listener.into_std() {
        for _ in 0..limits.connections_max {
            let Ok((stream, client)) = queued.accept() else { break };
            if let Ok(stream) = stream.set_nonblocking(true).and_then(|()| tokio::net::TcpStream::from_std(stream)) {
                conns.take(stream, client);
            }
        }
    }
    // Every connection holds a slot until it ends: all slots free means all ended.
    let all = u32::try_from(limits.connections_max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_millis(SHUTDOWN_CLOSE_NOTICE_MS), slots.acquire_many(all)).await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_millis(SHUTDOWN_DRAIN_MS), slots.acquire_many(all)).await;
    Ok(())
}

/// What a new connection needs: the router, the limits, the stop signals, and a slot.
struct Connections {
    router: Router,
    limits: HttpLimits,
    closing: Arc<AtomicBool>,
    slots: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
}

impl Connections {
    /// Serve one accepted connection on its own task, or close it at once at the cap.
    fn take(&self, stream: tokio::net::TcpStream, client: std::net::SocketAddr) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            // At the cap: close at once (the client sees a reset) rather than let it wait
            // in a backlog it cannot see.
            metrics::counter!("kalamdb_http_connections_refused_total").increment(1);
            drop(stream);
            return;
        };
        let _ = stream.set_nodelay(true);
        let router = self.router.clone();
        let mut stop = self.stop.clone();
        let closing = self.closing.clone();
        let header_read_timeout = self.limits.header_read_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(client));
                let mut router = router.clone();
                let closing = closing.clone();
                async move {
                    let mut resp = router.call(req.map(Body::new)).await.unwrap_or_else(|e| match e {});
                    if closing.load(Ordering::SeqCst) {
                        resp.headers_mut()
                            .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    const REQUEST: &[u8] = b"GET /ping HTTP/1.1\r\nhost: t\r\n\r\n";

    /// One response from a keep-alive connection: its head, lower-cased, up to the body.
    async fn response(stream: &mut TcpStream) -> String {
        stream.write_all(REQUEST).await.unwrap();
        read_response(stream).await
    }

    /// The response to a request already sent, lower-cased, up to the body.
    async fn read_response(stream: &mut TcpStream) -> String {
        let mut buf = vec![0u8; 4096];
        let mut got = 0;
        loop {
            let n = stream.read(&mut buf[got..]).await.unwrap();
            assert!(n > 0, "connection closed before a full response");
            got += n;
            let text = String::from_utf8_lossy(&buf[..got]).to_ascii_lowercase();
            if text.ends_with("pong") {
                return text;
            }
        }
    }

    /// Before a stop, responses keep the connection; once the stop began (leaderships being
    /// handed over, requests still served) a response closes it, so the client never holds
    /// an idle connection the node will drop under it.
    #[tokio::test]
    async fn a_stopping_server_closes_each_connection_after_its_response() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
        let limits = HttpLimits { connections_max: 8, header_read_timeout: Duration::from_secs(5) };
        let closing = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router, limits, closing.clone(), async move {
            let _ = stop_rx.await;
        }));

        let mut stream = TcpStream::connect(addr).await.unwrap();
        let first = response(&mut stream).await;
        assert!(!first.contains("connection: close"), "{first}");
        // The stop begins: the node still serves while it drains.
        closing.store(true, Ordering::SeqCst);
        let second = response(&mut stream).await;
        assert!(second.contains("connection: close"), "{second}");
        let mut rest = [0u8; 16];
        assert_eq!(stream.read(&mut rest).await.unwrap(), 0, "the server ends the connection");
        // A new connection is still answered, and closed the same way.
        let mut again = TcpStream::connect(addr).await.unwrap();
        assert!(response(&mut again).await.contains("connection: close"));

        let _ = stop_tx.send(());
        server.await.unwrap().unwrap();
    }

    /// A request sent on a keep-alive connection just after the shutdown came (no stop
    /// announced before) is still answered, and ends its connection; a connection that stays
    /// idle is closed once the notice is over, so the shutdown still ends.
    #[tokio::test]
    async fn a_request_sent_as_the_shutdown_comes_is_answered() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
        let limits = HttpLimits { connections_max: 8, header_read_timeout: Duration::from_secs(30) };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router, limits, Arc::new(AtomicBool::new(false)), async move {
            let _ = stop_rx.await;
        }));
        let mut busy = TcpStream::connect(addr).await.unwrap();
        let mut idle = TcpStream::connect(addr).await.unwrap();
        assert!(!response(&mut busy).await.contains("connection: close"));
        assert!(!response(&mut idle).await.contains("connection: close"));

        let began = std::time::Instant::now();
        let _ = stop_tx.send(());
        // The shutdown is under way (the listener is gone) when the next request is sent.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(TcpStream::connect(addr).await.is_err(), "no new connections once the shutdown began");
        assert!(response(&mut busy).await.contains("connection: close"));
        let mut rest = [0u8; 16];
        assert_eq!(busy.read(&mut rest).await.unwrap(), 0, "the answered connection ends");
        // The idle connection is closed after the notice, and the shutdown completes.
        assert_eq!(idle.read(&mut rest).await.unwrap(), 0);
        server.await.unwrap().unwrap();
        let took = began.elapsed();
        assert!(took >= Duration::from_millis(SHUTDOWN_CLOSE_NOTICE_MS), "closed before the notice: {took:?}");
        assert!(took < Duration::from_millis(SHUTDOWN_CLOSE_NOTICE_MS + 2_000), "took {took:?}");
    }

    /// A connection the kernel completed, its request sent, that the accept loop had not
    /// taken when the shutdown came is served, not reset with the listener.
    #[tokio::test]
    async fn a_connection_queued_when_the_shutdown_comes_is_served() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
        let limits = HttpLimits { connections_max: 8, header_read_timeout: Duration::from_secs(30) };
        // Connected and sent before the server runs at all (one-thread runtime): it waits in
        // the listener's backlog, and the server's first look finds the shutdown too.
        let mut queued = TcpStream::connect(addr).await.unwrap();
        queued.write_all(REQUEST).await.unwrap();
        let server = tokio::spawn(serve(listener, router, limits, Arc::new(AtomicBool::new(false)), async {}));
        assert!(read_response(&mut queued).await.contains("connection: close"));
        server.await.unwrap().unwrap();
    }
}
