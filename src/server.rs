//! Listeners: accept connections and serve them with hyper until shutdown, inside one
//! connection budget that every listener of the process shares.
//!
//! `serve(listener, handler, tracker, shutdown)` takes an already-bound listener so tests can
//! bind `127.0.0.1:0` and read the port. [`serve_tls`] is the same over TLS (the `listen_tls`
//! listener and the demo AS over HTTPS), [`serve_upgradable`] lets the forward proxy take over
//! a connection after `CONNECT`, and [`serve_connection`] serves the TLS stream inside such a
//! tunnel. All of them go through one accept loop and one per-connection driver, so the
//! rules below hold for every way in.
//!
//! # Why: a local process must not be able to block the proxy
//!
//! tokenrelay holds the developer's keys, and any local process can connect to it. Without
//! limits, sockets that never send a byte stay open for minutes (hyper-util's protocol
//! sniffing and the TLS handshake run before hyper's own header timer starts), and a few
//! hundred of them exhaust the open-file limit: every later `accept` fails with `EMFILE`,
//! legitimate requests hang, and the log fills with one error per failed accept.
//!
//! # The connection tracker
//!
//! [`crate::app`] creates one [`Tracker`] and hands it (an `Arc`) to every listener: reverse
//! plain, reverse TLS, forward, and the demo AS. Each accepted connection takes a [`Slot`]
//! in it; a `CONNECT` tunnel keeps the slot of the connection it came from, so tunnels count
//! too. A slot records how many requests are in flight on the connection and when it last
//! saw activity (a request starting or finishing, bytes through a tunnel).
//!
//! - **One cap.** At most `[proxy] max_connections` slots; by default
//!   min([`DEFAULT_MAX_CONNECTIONS`], soft `RLIMIT_NOFILE` − [`FD_RESERVE`]), so the process
//!   keeps descriptors for upstream sockets, the log and watched files even at the cap.
//! - **Shed the idle, not the busy.** At the cap a new connection is admitted by closing the
//!   connection idle longest (no request in flight; a tunnel counts as idle once quiet for
//!   [`IDLE_TIMEOUT`]). It is closed gracefully: HTTP/1.1 `Connection: close` semantics
//!   (RFC 9112 §9.6), HTTP/2 `GOAWAY` (RFC 9113 §6.8). A silent socket is the oldest idle
//!   connection there is, so an attacker's sockets go first and a legitimate request gets
//!   in. The shed connection keeps its slot until its socket is closed (a moment later), so
//!   even a burst never holds more descriptors than the cap. When every slot is busy, the
//!   new connection waits at most [`ADMIT_WAIT`] for one to free up and is then closed: the
//!   accept loop never hangs.
//! - **Idle timeout from accept.** A connection with no request in flight is closed after
//!   [`IDLE_TIMEOUT`]: from accept until a complete request head (this covers protocol
//!   sniffing, the TLS handshake and the header read, none of which hyper times on its own
//!   before the head), and between requests on a kept-alive connection (HTTP/1.1 and HTTP/2
//!   alike; HTTP/2 pings alone would keep a live but idle peer forever).
//! - **Tunnels.** A `CONNECT` tunnel is closed after [`TUNNEL_IDLE_TIMEOUT`] without a byte
//!   either way ([`Metered`] records the traffic).
//! - **Accept errors.** `EMFILE`/`ENFILE`/`ENOBUFS`/`ENOMEM` mean the process (or system) is
//!   out of resources: the loop closes the longest-idle connection to free a descriptor and
//!   waits until it has (or backs off exponentially, 10 ms up to 1 s, when nothing is idle).
//!   This matters when `max_connections` is set above what the open-file limit allows, or
//!   descriptors go elsewhere. Every error is counted, and logged at most once per 10 s with
//!   the number of failures since the last line, never once per failed accept.
//!
//! # Shutdown
//!
//! When `shutdown` turns true each listener closes its socket at once (new connections are
//! refused), then asks every connection to finish gracefully: requests in flight complete,
//! idle connections close. It waits at most [`SHUTDOWN_GRACE`] for its connections (tunnels
//! included: they end once quiet for a second). [`crate::app::Running::stop`] stops the
//! front listeners first and the demo AS only after they have drained, since requests in
//! flight may be on their way to it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};
use tokio_rustls::TlsAcceptor;

use crate::body::Body;

/// How long a client may take to send request headers (hyper's HTTP/1 header timer), and
/// how long the proxy waits for a request body.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to finish a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may stay without a request in flight: from accept to a complete
/// request head, and between requests on a kept-alive connection.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a `CONNECT` tunnel may carry no byte in either direction.
pub const TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// How long shutdown waits for requests in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The connection cap when the open-file limit allows it (`[proxy] max_connections` unset).
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// Descriptors kept out of the connection cap: upstream sockets, the log, watched files.
pub const FD_RESERVE: usize = 64;

/// The smallest default cap, however low the open-file limit.
const MIN_DEFAULT_CONNECTIONS: usize = 16;

/// How long a new connection waits for a slot when every slot is busy.
pub const ADMIT_WAIT: Duration = Duration::from_secs(2);

/// A connection being closed (idle, shed, shutdown) whose requests are all answered is
/// dropped once it has been quiet this long, even if the client keeps it open.
const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// At most one log line per this period for each kind of repeated event.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Accept back-off: first pause and ceiling.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The connection a request arrived on.
#[derive(Debug, Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    /// The client certificate (leaf, DER) presented in the TLS handshake, if any: the demo
    /// AS checks it for RFC 8705 client authentication.
    pub peer_cert: Option<Arc<[u8]>>,
    /// The connection is TLS (the app used an `https://` URL).
    pub tls: bool,
    /// The connection's place in the [`Tracker`]: a handler that takes the connection over
    /// (a `CONNECT` tunnel) keeps a clone, so the tunnel keeps counting against the cap.
    pub slot: Slot,
    /// Whether the local user owning the peer socket may be served, decided once at accept
    /// ([`crate::peer`]); a refused connection gets `403` to every request, before any handler.
    pub access: crate::peer::Access,
}

impl Conn {
    /// A plain-TCP connection from `peer`, counted nowhere.
    pub fn plain(peer: SocketAddr) -> Conn {
        Conn {
            peer,
            peer_cert: None,
            tls: false,
            slot: Slot::detached(),
            access: crate::peer::Access::Allowed { uid: None },
        }
    }
}

/// A request handler: `(request, connection) -> response`.
pub trait Handler: Send + Sync + 'static {
    fn call(self: Arc<Self>, req: Request<Incoming>, conn: Conn) -> impl Future<Output = Response<Body>> + Send;
}

/// Resolves when `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The default connection cap: min(512, soft `RLIMIT_NOFILE` − 64), at least 16.
pub fn default_max_connections() -> usize {
    match open_file_limit() {
        Some(soft) => soft.saturating_sub(FD_RESERVE).clamp(MIN_DEFAULT_CONNECTIONS, DEFAULT_MAX_CONNECTIONS),
        None => DEFAULT_MAX_CONNECTIONS,
    }
}

/// The cap to run with: `configured` (`[proxy] max_connections`), or the default. Warns when
/// the configured cap leaves fewer than [`FD_RESERVE`] descriptors under the open-file limit.
pub fn connection_limit(configured: Option<usize>) -> usize {
    let Some(n) = configured else { return default_max_connections() };
    if let Some(soft) = open_file_limit() {
        if n.saturating_add(FD_RESERVE) > soft {
            tracing::warn!(
                "[proxy] max_connections = {n} is close to the open-file limit ({soft}): at the cap, \
                 upstream connections may fail with \"too many open files\" (raise `ulimit -n` or lower max_connections)"
            );
        }
    }
    n
}

/// The soft open-file limit, when there is a finite one.
#[cfg(unix)]
fn open_file_limit() -> Option<usize> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given, which lives on this stack frame.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    usize::try_from(limit.rlim_cur).ok()
}

#[cfg(not(unix))]
fn open_file_limit() -> Option<usize> {
    None
}

/// The process is out of descriptors or memory: waiting (and freeing a descriptor) helps,
/// retrying at once does not.
#[cfg(unix)]
fn is_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

#[cfg(not(unix))]
fn is_exhaustion(_: &io::Error) -> bool {
    false
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code path panics while holding these locks; if one ever did, the data (counters and
    // a map of slots) is still consistent, so carry on rather than spread the panic.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Counts a repeated event and says when to log it: at most once per [`LOG_EVERY`].
#[derive(Debug, Default)]
struct RateLimited(Mutex<(Option<Instant>, u64)>);

impl RateLimited {
    /// Counts one event; `Some(n)` when a line is due, `n` being the events since the last one.
    fn hit(&self) -> Option<u64> {
        let mut s = lock(&self.0);
        s.1 += 1;
        if s.0.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            return None;
        }
        s.0 = Some(Instant::now());
        Some(std::mem::take(&mut s.1))
    }
}

/// The connection budget shared by every listener of one running proxy; see the module doc.
pub struct Tracker {
    limit: usize,
    epoch: Instant,
    next_id: AtomicU64,
    slots: Mutex<HashMap<u64, Arc<SlotState>>>,
    /// Signalled when a slot is released.
    freed: Notify,
    accept_errors: RateLimited,
    shed_log: RateLimited,
    refused_log: RateLimited,
    /// Who may connect (`[proxy] allow_users`), checked at accept.
    peers: crate::peer::Gate,
    peer_log: RateLimited,
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker").field("limit", &self.limit).field("open", &self.open()).finish()
    }
}

impl Tracker {
    /// A tracker admitting at most `limit` connections (at least 1) from the running user
    /// and root.
    pub fn new(limit: usize) -> Arc<Tracker> {
        Tracker::with_peers(limit, crate::peer::Gate::default())
    }

    /// A tracker admitting at most `limit` connections, from the local users `peers` allows.
    pub fn with_peers(limit: usize, peers: crate::peer::Gate) -> Arc<Tracker> {
        Arc::new(Tracker {
            limit: limit.max(1),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            slots: Mutex::new(HashMap::new()),
            freed: Notify::new(),
            accept_errors: RateLimited::default(),
            shed_log: RateLimited::default(),
            refused_log: RateLimited::default(),
            peers,
            peer_log: RateLimited::default(),
        })
    }

    /// The accept-time peer check ([`crate::peer::Gate::check`]); refusals are logged, at
    /// most one line per [`LOG_EVERY`].
    fn check_peer(&self, stream: &tokio::net::TcpStream, peer: SocketAddr) -> crate::peer::Access {
        let local = stream.local_addr().unwrap_or(peer);
        let access = self.peers.check(local, peer);
        if let Some(refusal) = access.refusal() {
            if let Some(n) = self.peer_log.hit() {
                tracing::warn!(%peer, "refused {n} connection(s) from local users not allowed; latest: {refusal}");
            }
        }
        access
    }

    /// The cap.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Connections (and tunnels) holding a slot now.
    pub fn open(&self) -> usize {
        lock(&self.slots).len()
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    /// A slot for a new connection: at once below the cap; at the cap, once the longest-idle
    /// connection, told to close, has closed (a shed connection keeps its slot until its
    /// socket is closed, so the descriptors in use never exceed the cap, even in a burst);
    /// when nothing is idle, after waiting at most [`ADMIT_WAIT`] for a slot to be released.
    /// `None`: refused (the caller closes the connection). `drain` is held as long as the
    /// slot, so the listener can wait for its connections and the tunnels they became.
    pub async fn admit(self: &Arc<Self>, drain: Option<mpsc::Sender<()>>) -> Option<Slot> {
        let deadline = tokio::time::Instant::now() + ADMIT_WAIT;
        let mut victim = None;
        loop {
            // Registered before looking, so a release in between is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = self.try_admit(&drain, &mut victim) {
                return Some(slot);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                if let Some(n) = self.refused_log.hit() {
                    tracing::warn!(
                        limit = self.limit,
                        "connection limit reached and every connection is busy: refused {n} new connection(s) \
                         after waiting {ADMIT_WAIT:?} (raise [proxy] max_connections if this is legitimate load)"
                    );
                }
                return None;
            }
        }
    }

    /// Admits below the cap. At the cap, sheds the longest-idle connection for this admission
    /// (`victim`), unless the one shed earlier is still closing, and says to wait.
    fn try_admit(self: &Arc<Self>, drain: &Option<mpsc::Sender<()>>, victim: &mut Option<u64>) -> Option<Slot> {
        let now = self.now_ms();
        let mut slots = lock(&self.slots);
        if slots.len() < self.limit {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let state = Arc::new(SlotState::new(id, self.epoch, now));
            slots.insert(id, state.clone());
            drop(slots);
            return Some(Slot(Arc::new(SlotHandle { tracker: Some(self.clone()), state, _drain: drain.clone() })));
        }
        if victim.is_some_and(|id| slots.contains_key(&id)) {
            return None;
        }
        *victim = shed_longest_idle(&slots, now);
        drop(slots);
        if victim.is_some() {
            if let Some(n) = self.shed_log.hit() {
                tracing::warn!(
                    limit = self.limit,
                    "connection limit reached: closed {n} idle connection(s) (the longest idle first) to admit new ones"
                );
            }
        }
        None
    }

    /// Tells the longest-idle connection to close (its slot is released once it has).
    pub fn shed_idle(&self) -> bool {
        shed_longest_idle(&lock(&self.slots), self.now_ms()).is_some()
    }

    fn release(&self, id: u64) {
        if lock(&self.slots).remove(&id).is_some() {
            self.freed.notify_waiters();
        }
    }

    /// Counts a failed `accept`, logs it (rate-limited), sheds an idle connection when the
    /// process is out of descriptors, and says how long to pause at most and whether a
    /// connection was shed (then the pause ends as soon as its slot is released).
    fn accept_failed(&self, e: &io::Error, local: Option<SocketAddr>, backoff: &mut Duration) -> (Duration, bool) {
        let shed = is_exhaustion(e) && self.shed_idle();
        if let Some(n) = self.accept_errors.hit() {
            tracing::warn!(
                listener = ?local,
                open = self.open(),
                limit = self.limit,
                shed_idle = shed,
                "accept failed {n} time(s) since the last report, latest: {e}; backing off {backoff:?}"
            );
        }
        let pause = *backoff;
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
        (pause, shed)
    }
}

/// Tells the longest-idle sheddable connection in `slots` to close; its id.
fn shed_longest_idle(slots: &HashMap<u64, Arc<SlotState>>, now: u64) -> Option<u64> {
    let victim = slots.values().filter(|s| s.sheddable(now)).min_by_key(|s| s.last.load(Ordering::Relaxed))?;
    victim.shed();
    Some(victim.id)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One connection's record in the tracker.
struct SlotState {
    id: u64,
    epoch: Instant,
    /// Requests in flight (from head parsed to response body sent).
    busy: AtomicUsize,
    /// Whether a request head was ever completed on the connection: until then there is no
    /// response to flush, and closing it loses nothing.
    served: AtomicBool,
    /// Last activity, in milliseconds since `epoch`.
    last: AtomicU64,
    /// The connection became a `CONNECT` tunnel: no requests to count, only bytes.
    tunnel: AtomicBool,
    /// Shed: close as soon as possible.
    shed: AtomicBool,
    close: Notify,
}

impl SlotState {
    fn new(id: u64, epoch: Instant, now: u64) -> SlotState {
        SlotState {
            id,
            epoch,
            busy: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            last: AtomicU64::new(now),
            tunnel: AtomicBool::new(false),
            shed: AtomicBool::new(false),
            close: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    fn touch(&self) {
        self.last.fetch_max(self.now_ms(), Ordering::Relaxed);
    }

    /// How long since the last activity, or `None` while a request is in flight.
    fn idle_for(&self) -> Option<Duration> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(Duration::from_millis(self.now_ms().saturating_sub(self.last.load(Ordering::Relaxed))))
    }

    /// May be closed to make room: nothing in flight (a tunnel: quiet for [`IDLE_TIMEOUT`],
    /// since a quiet tunnel may still be waiting for an answer inside).
    fn sheddable(&self, now: u64) -> bool {
        if self.busy.load(Ordering::Acquire) > 0 || self.shed.load(Ordering::Acquire) {
            return false;
        }
        !self.tunnel.load(Ordering::Relaxed)
            || now.saturating_sub(self.last.load(Ordering::Relaxed)) >= millis(IDLE_TIMEOUT)
    }

    fn shed(&self) {
        self.shed.store(true, Ordering::Release);
        self.close.notify_waiters();
    }
}

struct SlotHandle {
    tracker: Option<Arc<Tracker>>,
    state: Arc<SlotState>,
    _drain: Option<mpsc::Sender<()>>,
}

impl Drop for SlotHandle {
    fn drop(&mut self) {
        if let Some(tracker) = &self.tracker {
            tracker.release(self.state.id);
        }
    }
}

/// A connection's place in the [`Tracker`], released when the last clone is dropped.
#[derive(Clone)]
pub struct Slot(Arc<SlotHandle>);

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.0.state;
        f.debug_struct("Slot")
            .field("id", &s.id)
            .field("busy", &s.busy.load(Ordering::Relaxed))
            .field("tunnel", &s.tunnel.load(Ordering::Relaxed))
            .finish()
    }
}

/// Why a connection is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Nothing in flight for the idle timeout.
    Idle,
    /// Closed to make room for a new connection at the cap.
    Shed,
}

impl fmt::Display for Close {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Close::Idle => "idle timeout",
            Close::Shed => "shed at the connection limit",
        })
    }
}

impl Slot {
    /// A slot counted in no tracker (connections served outside a listener).
    pub fn detached() -> Slot {
        Slot(Arc::new(SlotHandle {
            tracker: None,
            state: Arc::new(SlotState::new(0, Instant::now(), 0)),
            _drain: None,
        }))
    }

    /// Records activity now.
    pub fn touch(&self) {
        self.0.state.touch();
    }

    /// Marks a request in flight until the guard is dropped.
    pub fn busy(&self) -> Busy {
        let state = self.0.state.clone();
        state.busy.fetch_add(1, Ordering::AcqRel);
        state.served.store(true, Ordering::Relaxed);
        state.touch();
        Busy(state)
    }

    /// The connection is now a `CONNECT` tunnel: no requests to count, only bytes; it may be
    /// shed only once quiet for [`IDLE_TIMEOUT`] (a quiet tunnel may be waiting for an answer).
    pub fn mark_tunnel(&self) {
        self.0.state.tunnel.store(true, Ordering::Relaxed);
    }

    /// Resolves when the connection should close: shed, or idle (nothing in flight, no
    /// activity) for `idle`.
    pub async fn closed(&self, idle: Duration) -> Close {
        let s = &self.0.state;
        loop {
            let notified = s.close.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if s.shed.load(Ordering::Acquire) {
                return Close::Shed;
            }
            let wait = match s.idle_for() {
                Some(quiet) if quiet >= idle => return Close::Idle,
                Some(quiet) => idle - quiet,
                // Busy: look again later (the request's end resets the clock anyway).
                None => idle,
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// A request in flight on a [`Slot`]; see [`Slot::busy`].
pub struct Busy(Arc<SlotState>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An I/O stream that records every byte read through it as activity on a [`Slot`]: both
/// ends of a tunnel are read, so traffic either way keeps the tunnel alive.
pub struct Metered<T> {
    io: T,
    slot: Slot,
}

impl<T> Metered<T> {
    pub fn new(io: T, slot: Slot) -> Metered<T> {
        Metered { io, slot }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.slot.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Accepts connections on `listener` until `shutdown` turns true, serving each with `handler`
/// within `tracker`'s budget. In-flight requests finish gracefully on shutdown.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    tracker: Arc<Tracker>,
    shutdown: watch::Receiver<bool>,
) {
    serve_with(listener, Mode::Plain, handler, tracker, shutdown).await
}

/// Like [`serve`], over TLS with `tls` (ALPN h2 and http/1.1 are negotiated by the config).
/// A client gets [`HANDSHAKE_TIMEOUT`] to finish the handshake.
pub async fn serve_tls<H: Handler>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    handler: Arc<H>,
    tracker: Arc<Tracker>,
    shutdown: watch::Receiver<bool>,
) {
    serve_with(listener, Mode::Tls(TlsAcceptor::from(tls)), handler, tracker, shutdown).await
}

/// Like [`serve`], with HTTP/1.1 upgrades enabled so the handler can take over a connection
/// after answering `CONNECT` (the forward proxy).
pub async fn serve_upgradable<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    tracker: Arc<Tracker>,
    shutdown: watch::Receiver<bool>,
) {
    serve_with(listener, Mode::Upgrades, handler, tracker, shutdown).await
}

#[derive(Clone)]
enum Mode {
    Plain,
    Tls(TlsAcceptor),
    Upgrades,
}

fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    // Dead HTTP/2 peers are found by pings; live idle ones are closed by the idle timeout.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

fn service<H: Handler>(
    handler: Arc<H>,
    conn: Conn,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone {
    service_fn(move |req| {
        // In flight from the complete head until the response body is sent (or dropped).
        let busy = conn.slot.busy();
        let (handler, conn) = (handler.clone(), conn.clone());
        async move {
            if let Some(refusal) = conn.access.refusal() {
                return Ok(refusal.response());
            }
            let resp = handler.call(req, conn).await;
            Ok::<_, Infallible>(resp.map(|body| {
                body.map_frame(move |frame| {
                    let _in_flight = &busy;
                    frame
                })
                .boxed_unsync()
            }))
        }
    })
}

/// Drives one hyper connection until it ends, it goes idle or is shed ([`Slot::closed`]),
/// or shutdown; then closes it gracefully, waiting for the requests in flight (at most
/// [`SHUTDOWN_GRACE`] on shutdown, [`IDLE_TIMEOUT`] otherwise).
async fn drive<C>(conn: C, slot: &Slot, shutdown: &mut watch::Receiver<bool>, peer: SocketAddr) -> Result<(), C::Error>
where
    C: GracefulConnection,
{
    tokio::pin!(conn);
    let (why, bound) = tokio::select! {
        r = conn.as_mut() => return r,
        why = slot.closed(IDLE_TIMEOUT) => (why.to_string(), IDLE_TIMEOUT),
        _ = stopped(shutdown) => ("shutdown".to_string(), SHUTDOWN_GRACE),
    };
    tracing::debug!(%peer, "closing connection: {why}");
    conn.as_mut().graceful_shutdown();
    let deadline = tokio::time::Instant::now() + bound;
    let state = &slot.0.state;
    loop {
        // Dropped at once when no request head was ever completed (a socket still trickling
        // its first head has nothing to flush: waiting for it would let a flood of such
        // sockets delay every admission at the cap); otherwise once everything answered has
        // been quiet for DRAIN_QUIET, however the client keeps the socket open (or trickles
        // its next head). Nothing a client sends resets either clock.
        let drained =
            state.idle_for().is_some_and(|quiet| quiet >= DRAIN_QUIET || !state.served.load(Ordering::Relaxed));
        if drained || tokio::time::Instant::now() >= deadline {
            return Ok(());
        }
        tokio::select! {
            r = conn.as_mut() => return r,
            _ = tokio::time::sleep(DRAIN_QUIET / 4) => {}
        }
    }
}

async fn serve_with<H: Handler>(
    listener: TcpListener,
    mode: Mode,
    handler: Arc<H>,
    tracker: Arc<Tracker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(builder());
    let local = listener.local_addr().ok();
    // Every slot this listener hands out holds a sender: when all are gone, so are its
    // connections and the tunnels they became.
    let (drain, mut drained) = mpsc::channel::<()>(1);
    let mut backoff = BACKOFF_MIN;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    backoff = BACKOFF_MIN;
                    pair
                }
                Err(e) => {
                    // Registered before shedding, so the release that follows is not missed.
                    let freed = tracker.freed.notified();
                    tokio::pin!(freed);
                    freed.as_mut().enable();
                    let (pause, shed) = tracker.accept_failed(&e, local, &mut backoff);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => continue,
                        _ = freed, if shed => continue,
                        _ = stopped(&mut shutdown) => break,
                    }
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let admitted = tokio::select! {
            slot = tracker.admit(Some(drain.clone())) => slot,
            _ = stopped(&mut shutdown) => break,
        };
        let Some(slot) = admitted else {
            tracing::debug!(%peer, "connection refused: connection limit reached");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let mode = mode.clone();
        let mut shutdown = shutdown.clone();
        let tracker = tracker.clone();
        tokio::spawn(async move {
            // Once per connection, in its own task: the lookup is a syscall or two, and naming a
            // refused user may ask the user database.
            let access = tracker.check_peer(&stream, peer);
            let result = match mode {
                Mode::Plain => {
                    let conn = Conn { peer, peer_cert: None, tls: false, slot: slot.clone(), access };
                    let conn = builder.serve_connection(TokioIo::new(stream), service(handler, conn));
                    drive(conn.into_owned(), &slot, &mut shutdown, peer).await
                }
                Mode::Upgrades => {
                    let conn = Conn { peer, peer_cert: None, tls: false, slot: slot.clone(), access };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service(handler, conn));
                    drive(conn.into_owned(), &slot, &mut shutdown, peer).await
                }
                Mode::Tls(acceptor) => {
                    let accepted = tokio::select! {
                        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => r,
                        why = slot.closed(IDLE_TIMEOUT) => return tracing::debug!(%peer, "closed during the TLS handshake: {why}"),
                        _ = stopped(&mut shutdown) => return,
                    };
                    let tls = match accepted {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => return tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                    };
                    let peer_cert =
                        tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Arc::from(c.as_ref()));
                    let conn = Conn { peer, peer_cert, tls: true, slot: slot.clone(), access };
                    let conn = builder.serve_connection(TokioIo::new(tls), service(handler, conn));
                    drive(conn.into_owned(), &slot, &mut shutdown, peer).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    // Close the socket first: from here on, new connections are refused.
    drop(listener);
    drop(drain);
    if tokio::time::timeout(SHUTDOWN_GRACE, drained.recv()).await.is_err() {
        tracing::warn!(listener = ?local, "shutdown: connections still open after {SHUTDOWN_GRACE:?}; closing them");
    }
}

/// Serves one already-established connection (a TLS stream inside a `CONNECT` tunnel) with
/// HTTP/1.1 or HTTP/2 until it ends, idles out or is shed (`conn.slot`); on `shutdown` it is
/// closed gracefully, waiting at most [`SHUTDOWN_GRACE`] for requests in flight.
pub async fn serve_connection<I, H>(io: I, handler: Arc<H>, conn: Conn, mut shutdown: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let builder = builder();
    let (peer, slot) = (conn.peer, conn.slot.clone());
    let conn = builder.serve_connection(TokioIo::new(io), service(handler, conn));
    if let Err(e) = drive(conn, &slot, &mut shutdown, peer).await {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn at_the_cap_the_longest_idle_connection_is_shed_and_busy_ones_are_kept() {
        let tracker = Tracker::new(2);
        let first = tracker.admit(None).await.unwrap();
        let second = tracker.admit(None).await.unwrap();
        let _busy = second.busy();
        let third = tokio::spawn({
            let tracker = tracker.clone();
            async move { tracker.admit(None).await }
        });
        assert_eq!(first.closed(IDLE_TIMEOUT).await, Close::Shed, "the idle one goes");
        // Its place is handed on only once it has closed.
        assert_eq!(tracker.open(), 2);
        assert!(!third.is_finished());
        drop(first);
        let third = third.await.unwrap().unwrap();
        assert_eq!(tracker.open(), 2);
        // Now `third` (idle) is the only candidate; `second` is busy.
        let fourth = tokio::spawn({
            let tracker = tracker.clone();
            async move { tracker.admit(None).await.is_some() }
        });
        assert_eq!(third.closed(IDLE_TIMEOUT).await, Close::Shed);
        drop(third);
        assert!(fourth.await.unwrap());
    }

    #[tokio::test]
    async fn when_every_slot_is_busy_a_new_connection_waits_then_is_refused() {
        let tracker = Tracker::new(1);
        let only = tracker.admit(None).await.unwrap();
        let busy = only.busy();
        let started = Instant::now();
        assert!(tracker.admit(None).await.is_none());
        assert!(started.elapsed() >= ADMIT_WAIT && started.elapsed() < ADMIT_WAIT * 2);
        // Released while waiting: admitted.
        let waiting = tokio::spawn({
            let tracker = tracker.clone();
            async move { tracker.admit(None).await.is_some() }
        });
        tokio::task::yield_now().await;
        drop(busy);
        drop(only);
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn a_quiet_tunnel_is_kept_until_it_has_been_quiet_for_the_idle_timeout() {
        let tracker = Tracker::new(1);
        let tunnel = tracker.admit(None).await.unwrap();
        tunnel.mark_tunnel();
        assert!(!tracker.shed_idle(), "a tunnel that just carried bytes is not idle");
        assert_eq!(tracker.open(), 1);
    }

    #[tokio::test]
    async fn an_idle_slot_times_out_and_a_busy_one_does_not() {
        let tracker = Tracker::new(4);
        let idle = tracker.admit(None).await.unwrap();
        let busy_slot = tracker.admit(None).await.unwrap();
        let _busy = busy_slot.busy();
        let short = Duration::from_millis(100);
        let closed = tokio::time::timeout(Duration::from_secs(5), idle.closed(short)).await;
        assert_eq!(closed.ok(), Some(Close::Idle));
        let closed = tokio::time::timeout(short * 4, busy_slot.closed(short)).await;
        assert!(closed.is_err(), "a request in flight: no idle timeout");
    }

    #[test]
    fn the_default_cap_leaves_descriptors_for_upstreams() {
        let cap = default_max_connections();
        assert!((MIN_DEFAULT_CONNECTIONS..=DEFAULT_MAX_CONNECTIONS).contains(&cap));
        if let Some(soft) = open_file_limit() {
            assert!(cap + FD_RESERVE <= soft || cap == MIN_DEFAULT_CONNECTIONS);
        }
    }

    #[test]
    fn repeated_events_are_logged_at_most_once_per_period() {
        let limiter = RateLimited::default();
        assert_eq!(limiter.hit(), Some(1));
        assert!((0..300).all(|_| limiter.hit().is_none()));
    }
}
