//! The HTTP server both modes run each listener with (instead of bare `axum::serve`), so that no
//! client can hold the operator: a header read timeout (hyper's), a body read timeout (a body
//! that has not arrived by then gets 408 and the connection closes), an idle timeout (no bytes
//! moving while no request is being handled), a connection cap per listener (connections over
//! it are closed at once and counted), and a shutdown that stops accepting, lets in-flight
//! requests finish for a bounded time and then closes what is left.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// The limits every listener is served with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From when a connection waits for a request (a new connection, or a kept-alive one after
    /// its last answer) until that request's headers are complete. hyper arms it as soon as the
    /// connection waits, so it also closes kept-alive connections no request arrives on.
    pub header_read_timeout: Duration,
    /// From a request's headers until its whole body has arrived; later: 408, connection closed.
    pub body_read_timeout: Duration,
    /// No byte moved either way for this long while no request was being handled (a client
    /// that stops reading its answer): the connection is closed.
    pub idle_timeout: Duration,
    /// Open connections per listener; the next one is closed as soon as it is accepted.
    pub max_connections: usize,
    /// After a shutdown signal: how long in-flight requests may take before their connections
    /// are closed.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// The defaults with a short drain, so tests and simulations stop quickly.
    pub fn local() -> Self {
        Limits {
            drain_timeout: Duration::from_secs(2),
            ..Limits::default()
        }
    }
}

/// Which listener a connection came in on, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// DDM endpoints and the enrollment gate (`--listen`).
    Device,
    /// Metrics, health, readiness and the admin API (`--admin-listen`).
    Admin,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::Device => "device",
            Side::Admin => "admin",
        }
    }
}

/// Serves `router` on `listener` with `limits` until `shutdown` resolves, then drains: stops
/// accepting, lets requests in flight finish for `limits.drain_timeout`, and closes every
/// connection still open after that. Returns once every connection is closed.
pub async fn serve<F>(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    side: Side,
    metrics: Arc<Metrics>,
    shutdown: F,
) where
    F: Future<Output = ()> + Send,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    if open.load(Ordering::Acquire) >= limits.max_connections {
                        // Dropped unread: the client sees the connection closed at once.
                        metrics.http_connection_refused(side.label());
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let counted = OpenConnection::new(open.clone(), metrics.clone(), side);
                    connections.spawn(connection(
                        stream,
                        router.clone(),
                        limits,
                        stop_rx.clone(),
                        counted,
                    ));
                }
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, listener = side.label(), "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let in_flight = connections.len();
    let drained = tokio::time::timeout(limits.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            listener = side.label(),
            open = connections.len(),
            bound = ?limits.drain_timeout,
            "connections still open after the drain bound are closed"
        );
        connections.shutdown().await;
    } else if in_flight > 0 {
        tracing::info!(listener = side.label(), "every connection drained");
    }
}

/// One connection, counted open until it ends.
struct OpenConnection {
    open: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    side: Side,
}

impl OpenConnection {
    fn new(open: Arc<AtomicUsize>, metrics: Arc<Metrics>, side: Side) -> Self {
        let now = open.fetch_add(1, Ordering::AcqRel) + 1;
        metrics.http_connections_open(side.label(), now);
        OpenConnection {
            open,
            metrics,
            side,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let now = self.open.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        self.metrics.http_connections_open(self.side.label(), now);
    }
}

async fn connection(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    counted: OpenConnection,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let (metrics, side) = (counted.metrics.clone(), counted.side);
    let per_request = activity.clone();
    let service = hyper::service::service_fn(move |request| {
        handle(
            router.clone(),
            request,
            limits.body_read_timeout,
            per_request.clone(),
            metrics.clone(),
            side,
        )
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    if error.is_timeout() {
                        counted.metrics.http_timeout(side.label(), "header");
                    } else {
                        tracing::debug!(%error, listener = side.label(), "connection ended with an error");
                    }
                }
                return;
            }
            _ = stop.wait_for(|stop| *stop), if !stopping => {
                // Idle connections close now; one with a request in flight after its answer.
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            () = activity.idle_for(limits.idle_timeout) => {
                counted.metrics.http_timeout(side.label(), "idle");
                return;
            }
        }
    }
}

/// One request: its body given `body_timeout` to arrive; a body that did not gets 408 with the
/// connection closed, whatever the handler answered to the failed read.
async fn handle(
    mut router: Router,
    request: Request<Incoming>,
    body_timeout: Duration,
    activity: Arc<Activity>,
    metrics: Arc<Metrics>,
    side: Side,
) -> Result<Response<Body>, Infallible> {
    let _busy = activity.busy();
    let timed_out = Arc::new(AtomicBool::new(false));
    let request =
        request.map(|body| Body::new(DeadlineBody::new(body, body_timeout, timed_out.clone())));
    let response = match tower_service::Service::call(&mut router, request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if timed_out.load(Ordering::Acquire) {
        metrics.http_timeout(side.label(), "body");
        let mut response = Response::new(Body::from(format!(
            "the request body did not arrive within {} s\n",
            body_timeout.as_secs_f64()
        )));
        *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return Ok(response);
    }
    Ok(response)
}

/// Why a request body read failed: it did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(Duration);

/// A request body that fails once `timeout` has passed since the request's headers and it is
/// still waiting for data (a body whose data is there is never cut short).
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    timed_out: Arc<AtomicBool>,
}

impl DeadlineBody {
    fn new(inner: Incoming, timeout: Duration, timed_out: Arc<AtomicBool>) -> Self {
        DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            timed_out,
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    this.timed_out.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(BodyTimedOut(this.timeout).into())));
                }
                Poll::Pending
            }
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// When bytes last moved on a connection, and how many of its requests are being handled.
struct Activity {
    started: Instant,
    /// Milliseconds after `started`.
    last: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            started: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let millis = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(millis, Ordering::Relaxed);
    }

    fn busy(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Resolves once nothing moved for `limit` while no request was in flight.
    async fn idle_for(&self, limit: Duration) {
        loop {
            if self.in_flight.load(Ordering::Acquire) > 0 {
                // A handler at work (waiting on the store, the upstream) is not idleness.
                tokio::time::sleep(limit).await;
                continue;
            }
            let last = self.started + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let until = last + limit;
            if Instant::now() >= until {
                return;
            }
            tokio::time::sleep_until(until).await;
        }
    }
}

/// A request being handled; the count drops when its handler has answered.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

/// The TCP stream, noting every read or write that moved bytes.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A bound listener and what it serves.
pub struct Listener {
    pub listener: TcpListener,
    pub router: Router,
}

/// Serves the device side and the admin side until `shutdown` resolves, then drains both
/// (each within `limits.drain_timeout`, at the same time); returns once both are closed.
pub async fn serve_both<F>(
    device: Listener,
    admin: Listener,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: F,
) where
    F: Future<Output = ()> + Send,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut stop: watch::Receiver<bool>| async move {
        // An error means the sender is gone, which happens only after it sent.
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    tokio::join!(
        signal,
        serve(
            device.listener,
            device.router,
            limits,
            Side::Device,
            metrics.clone(),
            stopped(stop_rx.clone()),
        ),
        serve(
            admin.listener,
            admin.router,
            limits,
            Side::Admin,
            metrics,
            stopped(stop_rx),
        ),
    );
}

/// Both listeners served by a task of their own (Kubernetes mode), until drained, or aborted
/// when dropped.
pub struct Spawned {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Spawned {
    pub fn start(device: Listener, admin: Listener, limits: Limits, metrics: Arc<Metrics>) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(serve_both(device, admin, limits, metrics, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
        Spawned {
            stop,
            task: Some(task),
        }
    }

    /// Stops accepting and lets requests in flight finish within the drain bound.
    pub async fn drain(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Spawned {
    /// Closes both listeners and every connection now.
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
