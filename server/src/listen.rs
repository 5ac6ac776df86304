//! The connection loop: bounded connections, header/body/idle timeouts, a transport seam
//! for TLS, and a shutdown that drains for a bounded time.
//!
//! `axum::serve` has no timeouts: half-open connections piled up until the server was
//! unreachable, and a client holding a half-sent request kept SIGTERM from finishing.
//! Here every connection is bounded in time at every stage:
//! - the TLS handshake and each request's headers: `header_timeout` (hyper's header-read
//!   timer, which also runs while a keep-alive connection waits for its next request);
//! - a request body: `body_timeout` from the end of its headers;
//! - any read or write that makes no progress for `idle_timeout` (a client that stops
//!   reading its response);
//!
//! and their number by `max_connections` (more wait in the kernel's backlog). On shutdown
//! the listener closes, connections finish their request in flight and close, and after
//! `drain` whatever is left is abandoned.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// Limits of the connection loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// TLS handshake and request headers.
    pub header_timeout: Duration,
    /// A request body, from the end of its headers.
    pub body_timeout: Duration,
    /// A read or write without progress.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long shutdown waits for connections to finish.
    pub drain: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 16_384,
            drain: Duration::from_secs(10),
        }
    }
}

/// A connection's byte stream after the transport's handshake.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Future of [`Accept::accept`].
pub type Accepting = Pin<Box<dyn Future<Output = io::Result<Box<dyn Io>>> + Send>>;

/// The transport seam: plain TCP, or TLS.
pub trait Accept: Send + Sync + 'static {
    /// Turns an accepted TCP stream into the stream HTTP runs on.
    fn accept(&self, tcp: TcpStream) -> Accepting;
    /// `http` or `https` (for the log).
    fn scheme(&self) -> &'static str;
}

/// Plain HTTP.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainTcp;

impl Accept for PlainTcp {
    fn accept(&self, tcp: TcpStream) -> Accepting {
        Box::pin(async move { Ok(Box::new(tcp) as Box<dyn Io>) })
    }

    fn scheme(&self) -> &'static str {
        "http"
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains for at most
/// `opts.drain`. Handlers see the client address as `ConnectInfo<SocketAddr>`.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    opts: ServeOptions,
    acceptor: Arc<dyn Accept>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limit = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .keep_alive(true);
    let mut accept_errors = crate::logs::Throttle::new(Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = Arc::clone(&limit).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, remote) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    if let Some(suppressed) = accept_errors.admit() {
                        tracing::warn!(error = %e, suppressed, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = Arc::clone(&acceptor);
        let router = router.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let io = match tokio::time::timeout(opts.header_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(io)) => io,
                _ => return,
            };
            let io = TokioIo::new(IdleDeadline::new(io, opts.idle_timeout));
            let body_timeout = opts.body_timeout;
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let mut req = req.map(|b| {
                    if hyper::body::Body::is_end_stream(&b) {
                        Body::new(b)
                    } else {
                        Body::new(DeadlineBody::new(b, body_timeout))
                    }
                });
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(remote));
                router.clone().oneshot(req)
            });
            let _ = watcher.watch(builder.serve_connection(io, svc)).await;
        });
    }
    drop(listener);
    let open = graceful.count();
    if tokio::time::timeout(opts.drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            drain_secs = opts.drain.as_secs_f64(),
            open,
            "drain time over: closing the connections still open"
        );
    }
    Ok(())
}

/// A request body that must arrive completely before a deadline.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, limit: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err("request body timeout".into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Fails a read or write that makes no progress for `idle`.
struct IdleDeadline<T> {
    io: T,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
}

impl<T> IdleDeadline<T> {
    fn new(io: T, idle: Duration) -> Self {
        Self {
            io,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn progress(&mut self) {
        let at = Instant::now() + self.idle;
        self.timer.as_mut().reset(at);
    }

    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        self.timer.as_mut().poll(cx).is_ready()
    }

    /// A read or write answer of the inner I/O under the deadline: a ready one restarts
    /// the clock; a pending one past the deadline fails.
    fn watched<R>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(r) => {
                self.progress();
                Poll::Ready(r)
            }
            Poll::Pending if self.stalled(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle too long")
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleDeadline<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        self.watched(cx, polled)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleDeadline<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watched(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending if self.stalled(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The soft limit on open files (`None` when unknown): connections beyond it fail.
pub fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(
        opts: ServeOptions,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let router = Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/echo", post(|b: Bytes| async move { b }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let h = tokio::spawn(async move {
            serve_with(listener, router, opts, Arc::new(PlainTcp), async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        (addr, tx, h)
    }

    async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
        let mut buf = [0u8; 1024];
        let deadline = Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    fn quick() -> ServeOptions {
        ServeOptions {
            header_timeout: Duration::from_millis(300),
            body_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(600),
            max_connections: 64,
            drain: Duration::from_millis(500),
        }
    }

    /// Slowloris: a connection that sends nothing, half a header, or half a body is closed.
    #[tokio::test]
    async fn half_sent_requests_are_cut_off() {
        let (addr, _stop, _h) = start(quick()).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut half_head = TcpStream::connect(addr).await.unwrap();
        half_head.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let mut half_body = TcpStream::connect(addr).await.unwrap();
        half_body
            .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
            .await
            .unwrap();
        for s in [&mut silent, &mut half_head, &mut half_body] {
            assert!(closed_within(s, Duration::from_secs(5)).await);
        }
    }

    /// A keep-alive connection that goes quiet after its request is closed.
    #[tokio::test]
    async fn idle_keep_alive_connections_are_closed() {
        let (addr, _stop, _h) = start(quick()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    }

    /// A client holding a half-sent request does not keep shutdown from finishing.
    #[tokio::test]
    async fn shutdown_drains_for_a_bounded_time() {
        let mut opts = quick();
        opts.header_timeout = Duration::from_secs(60);
        opts.body_timeout = Duration::from_secs(60);
        opts.idle_timeout = Duration::from_secs(60);
        let (addr, stop, h) = start(opts).await;
        let mut held = TcpStream::connect(addr).await.unwrap();
        held.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), h).await.unwrap().unwrap();
    }

    /// Past `max_connections`, a new client waits until one closes instead of failing.
    #[tokio::test]
    async fn connections_beyond_the_limit_wait() {
        let mut opts = quick();
        opts.max_connections = 2;
        let (addr, _stop, _h) = start(opts).await;
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        // Answered once the two silent ones hit the header timeout.
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    }
}
