//! Who is on the other end: the local user that owns the peer socket of an accepted loopback
//! connection, and whether `[proxy] allow_users` lets that user in.
//!
//! # Why
//!
//! Loopback is not a boundary between users. On a shared machine (a CI runner with several
//! jobs, a university or jump host) any process of any local user can connect to
//! `127.0.0.1:8787`, get tokens signed with the developer's client key, read the exchanges at
//! `/.tokenrelay/`, or tunnel through the forward proxy. ssh-agent answers this with socket
//! permissions; an HTTP endpoint cannot, since apps only speak TCP to it. But the kernel knows
//! which uid holds the other end of a loopback TCP connection, and tells us for the exact
//! 4-tuple: `NETLINK_SOCK_DIAG` (`netlink.rs`, what `ss` uses), with `/proc/net/tcp{,6}`
//! (`procnet.rs`) as the fallback.
//!
//! # The rule
//!
//! - Served: the uid running tokenrelay, root (who can read the keys anyway), and the users
//!   `[proxy] allow_users` lists (names resolved when the config is loaded); `["*"]` skips the
//!   check (warned at every start and reload).
//! - The lookup runs once per connection, at accept ([`crate::server`] calls [`Gate::check`]
//!   and carries the [`Access`] in its `Conn`); a refused connection is answered `403` to every
//!   request, by the accept loop itself, before any handler: nothing is signed, relayed or
//!   shown, and a `CONNECT` never becomes a tunnel.
//! - A peer socket that belongs to no process any more (closed, `TIME_WAIT`: the kernel reports
//!   uid 0 for those) has no owner to check: refused.
//! - No socket of this host with that 4-tuple: the peer is another machine (only reachable
//!   with `[proxy] allow_remote = true`, which governs it alone). On a loopback address that
//!   cannot be, so it is refused (a race with a closing socket).
//! - Other operating systems: no lookup; served, and said at every start and in `check`.

#[cfg(target_os = "linux")]
mod netlink;
#[cfg(target_os = "linux")]
mod procnet;
mod users;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::body::{self, Body};
pub use users::{name_of, running_uid, uid_of};

/// One TCP socket as the kernel describes it.
#[cfg(target_os = "linux")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Socket {
    /// The TCP state (`linux/tcp_states.h`).
    state: u8,
    uid: u32,
    /// 0 when no process holds the socket any more (closed, or a `TIME_WAIT` mini-socket).
    inode: u32,
}

/// What the kernel says about the socket at the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A socket of this host, held by a process running as this uid.
    Uid(u32),
    /// No socket of this host (this network namespace) has the 4-tuple: another machine, or a
    /// container with a network of its own.
    NotLocal,
}

/// Why the owner is not known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("the peer's socket is closing (no process holds it any more)")]
    Closing,
    #[error("{0}")]
    Failed(String),
    #[error("no peer lookup is implemented on this OS")]
    Unsupported,
}

/// Who owns the peer socket of the connection accepted at `local` from `peer`.
pub fn lookup(local: SocketAddr, peer: SocketAddr) -> Result<Owner, LookupError> {
    platform_lookup(canonical(local), canonical(peer))
}

#[cfg(not(target_os = "linux"))]
fn platform_lookup(_local: SocketAddr, _peer: SocketAddr) -> Result<Owner, LookupError> {
    Err(LookupError::Unsupported)
}

/// IPv4-mapped IPv6 as IPv4: a dual-stack listener sees `::ffff:127.0.0.1`, the kernel files
/// the connection under IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// [`lookup`] through `/proc/net/tcp{,6}` alone, the fallback (for `benches/peer_lookup.rs`).
#[cfg(target_os = "linux")]
#[doc(hidden)]
pub fn lookup_via_proc(local: SocketAddr, peer: SocketAddr) -> Result<Owner, LookupError> {
    match procnet::find(canonical(peer), canonical(local)) {
        Ok(Some(socket)) => owner(socket),
        Ok(None) => Ok(Owner::NotLocal),
        Err(e) => Err(LookupError::Failed(e.to_string())),
    }
}

#[cfg(target_os = "linux")]
fn platform_lookup(local: SocketAddr, peer: SocketAddr) -> Result<Owner, LookupError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    /// netlink has answered once: from then on its `ENOENT` means "no such socket", not "no
    /// inet_diag in this kernel", and `/proc` is not read.
    static NETLINK_ANSWERS: AtomicBool = AtomicBool::new(false);

    // The peer's socket: its own address is `peer`, it is connected to `local`.
    let netlink = match netlink::find(peer, local) {
        Ok(Some(socket)) => {
            NETLINK_ANSWERS.store(true, Ordering::Relaxed);
            return owner(socket);
        }
        Ok(None) if NETLINK_ANSWERS.load(Ordering::Relaxed) => return Ok(Owner::NotLocal),
        Ok(None) => "ENOENT".to_string(),
        Err(e) => e.to_string(),
    };
    match procnet::find(peer, local) {
        Ok(Some(socket)) => owner(socket),
        Ok(None) => Ok(Owner::NotLocal),
        Err(e) => Err(LookupError::Failed(format!("NETLINK_SOCK_DIAG: {netlink}; /proc/net/tcp: {e}"))),
    }
}

#[cfg(target_os = "linux")]
fn owner(socket: Socket) -> Result<Owner, LookupError> {
    /// `linux/tcp_states.h`: `TCP_TIME_WAIT`, `TCP_NEW_SYN_RECV` (mini-sockets, uid 0).
    const TIME_WAIT: u8 = 6;
    const NEW_SYN_RECV: u8 = 12;
    if socket.inode == 0 || socket.state == TIME_WAIT || socket.state == NEW_SYN_RECV {
        return Err(LookupError::Closing);
    }
    Ok(Owner::Uid(socket.uid))
}

/// A local user `[proxy] allow_users` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    /// As written in the config, or from the user database for a uid.
    pub name: Option<String>,
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name} (uid {})", self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

impl User {
    /// `uid`, named from the user database when it has a name.
    pub fn from_uid(uid: u32) -> User {
        User { uid, name: name_of(uid) }
    }

    /// As an `allow_users` entry: `"alice"`, or `1001` when the uid has no name.
    fn entry(&self) -> String {
        match &self.name {
            Some(n) => format!("{n:?}"),
            None => self.uid.to_string(),
        }
    }
}

/// `[proxy] allow_users`: the local users served besides the one running tokenrelay and
/// root, or any (`["*"]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowUsers {
    any: bool,
    users: Vec<User>,
}

impl AllowUsers {
    /// `["*"]`: any local user.
    pub fn any() -> AllowUsers {
        AllowUsers { any: true, users: Vec::new() }
    }

    /// These users, besides the running one and root.
    pub fn listed(users: Vec<User>) -> AllowUsers {
        AllowUsers { any: false, users }
    }

    pub fn is_any(&self) -> bool {
        self.any
    }

    /// The users listed (none for `["*"]`).
    pub fn users(&self) -> &[User] {
        &self.users
    }

    /// May a connection whose peer socket `uid` owns be served?
    pub fn allows(&self, uid: u32) -> bool {
        self.any || uid == 0 || uid == running_uid() || self.users.iter().any(|u| u.uid == uid)
    }

    /// Who may connect, in words (the start-up banner and `check`).
    pub fn describe(&self) -> String {
        if !LOOKUP_SUPPORTED {
            return format!("any local user ({})", unsupported_note());
        }
        if self.any {
            return "any local user ([proxy] allow_users = [\"*\"])".into();
        }
        format!("{} (other local users get 403; [proxy] allow_users adds them)", self.served())
    }

    /// The warning this setting earns at every start, reload and `check`, if any.
    pub fn warning(&self) -> Option<String> {
        if !LOOKUP_SUPPORTED {
            return Some(format!(
                "any local user can use this signer on this OS: {}; run tokenrelay only on a machine no one else uses",
                unsupported_note()
            ));
        }
        self.any.then(|| {
            "[proxy] allow_users = [\"*\"]: any local user can connect and get requests signed with your keys, \
             read your exchanges at /.tokenrelay/ and tunnel through the forward proxy"
                .to_string()
        })
    }

    /// `allow_users = [...]` with `user` added: the setting that would let `user` in.
    fn with(&self, user: &User) -> String {
        let entries: Vec<String> = self.users.iter().chain([user]).map(User::entry).collect();
        format!("allow_users = [{}]", entries.join(", "))
    }
}

/// Whether [`lookup`] is implemented on this OS.
pub const LOOKUP_SUPPORTED: bool = cfg!(target_os = "linux");

fn unsupported_note() -> String {
    format!("tokenrelay cannot tell which local user opened a loopback connection on {}", std::env::consts::OS)
}

/// What the accept-time check decided for one connection.
#[derive(Debug, Clone)]
pub enum Access {
    /// Serve it. `uid`: the peer's, when the lookup ran and named one.
    Allowed { uid: Option<u32> },
    /// Answer every request on it with [`Refusal::response`].
    Refused(Arc<Refusal>),
}

impl Access {
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Access::Refused(r) => Some(r),
            Access::Allowed { .. } => None,
        }
    }
}

/// Why a connection is refused: the peer's uid and name, and the setting that would allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The peer's user, when known.
    pub user: Option<User>,
    message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Refusal {
    fn not_allowed(user: User, allowed: &AllowUsers) -> Refusal {
        let name = user.name.clone().unwrap_or_else(|| format!("uid {}", user.uid));
        let message = format!(
            "this connection comes from {user}, and tokenrelay serves only {}: anyone it serves gets requests \
             signed with its keys. To let {name} use it, set [proxy] {} in proxy.toml",
            allowed.served(),
            allowed.with(&user),
        );
        Refusal { user: Some(user), message }
    }

    fn unknown(why: &str, allowed: &AllowUsers) -> Refusal {
        let message = format!(
            "tokenrelay could not tell which local user opened this connection ({why}), and serves only {}. \
             If any local user may use this signer, set [proxy] allow_users = [\"*\"] in proxy.toml",
            allowed.served()
        );
        Refusal { user: None, message }
    }

    /// `403` with the OAuth-style JSON error body tokenrelay uses for its own errors, and
    /// `Connection: close`.
    pub fn response(&self) -> Response<Body> {
        let mut doc = serde_json::json!({ "error": "tokenrelay_error", "error_description": self.message });
        if let Some(u) = &self.user {
            doc["peer_uid"] = u.uid.into();
            doc["peer_user"] = u.name.clone().into();
        }
        let mut resp = Response::new(body::full(Bytes::from(doc.to_string())));
        *resp.status_mut() = StatusCode::FORBIDDEN;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp
    }
}

impl AllowUsers {
    /// Everyone served: "alice (uid 1000, running tokenrelay), root (uid 0), bob (uid 1001)".
    fn served(&self) -> String {
        let me = User::from_uid(running_uid());
        let mut who = vec![match &me.name {
            Some(name) => format!("{name} (uid {}, running tokenrelay)", me.uid),
            None => format!("uid {} (running tokenrelay)", me.uid),
        }];
        if me.uid != 0 {
            who.push("root (uid 0)".into());
        }
        who.extend(self.users.iter().map(User::to_string));
        who.join(", ")
    }
}

/// The accept-time check every listener runs: [`lookup`], then the `allow_users` in force
/// (read afresh per connection, so a reload applies to new connections).
#[derive(Clone)]
pub struct Gate(Arc<dyn Fn() -> Arc<AllowUsers> + Send + Sync>);

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Gate").field(&(self.0)()).finish()
    }
}

impl Default for Gate {
    /// The running user and root only.
    fn default() -> Gate {
        Gate::fixed(Arc::new(AllowUsers::default()))
    }
}

impl Gate {
    /// Always `users`.
    pub fn fixed(users: Arc<AllowUsers>) -> Gate {
        Gate(Arc::new(move || users.clone()))
    }

    /// Whatever `current` returns at each connection (the live config's setting).
    pub fn live(current: impl Fn() -> Arc<AllowUsers> + Send + Sync + 'static) -> Gate {
        Gate(Arc::new(current))
    }

    /// May the connection accepted at `local` from `peer` be served? See the module doc.
    pub fn check(&self, local: SocketAddr, peer: SocketAddr) -> Access {
        let allowed = (self.0)();
        if allowed.any {
            return Access::Allowed { uid: None };
        }
        let loopback = peer.ip().to_canonical().is_loopback();
        let refuse = |r: Refusal| Access::Refused(Arc::new(r));
        match lookup(local, peer) {
            Ok(Owner::Uid(uid)) if allowed.allows(uid) => Access::Allowed { uid: Some(uid) },
            Ok(Owner::Uid(uid)) => refuse(Refusal::not_allowed(User::from_uid(uid), &allowed)),
            // Another machine: `allow_remote` let it reach this listener, and governs it alone.
            Ok(Owner::NotLocal) if !loopback => Access::Allowed { uid: None },
            Ok(Owner::NotLocal) => refuse(Refusal::unknown(
                &format!("no socket {peer} -> {local} on this host; it may have closed at once"),
                &allowed,
            )),
            Err(LookupError::Unsupported) => Access::Allowed { uid: None },
            Err(LookupError::Failed(_)) if !loopback => Access::Allowed { uid: None },
            Err(e) => refuse(Refusal::unknown(&format!("{peer} -> {local}: {e}"), &allowed)),
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::{TcpListener, TcpStream};

    use super::*;

    /// A connected loopback pair: (the accepted side's local address, its peer address, the
    /// client and accepted streams, kept open).
    fn pair(bind: &str) -> (SocketAddr, SocketAddr, TcpStream, TcpStream) {
        let listener = TcpListener::bind(bind).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        (accepted.local_addr().unwrap(), peer, client, accepted)
    }

    #[test]
    fn netlink_and_proc_name_the_running_user_over_ipv4_and_ipv6() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let (local, peer, _c, _a) = pair(bind);
            let via_netlink = netlink::find(peer, local).unwrap().unwrap();
            let via_proc = procnet::find(peer, local).unwrap().unwrap();
            assert_eq!(via_netlink.uid, running_uid(), "{bind}");
            assert_eq!(via_proc.uid, running_uid(), "{bind}");
            assert_eq!(via_netlink.inode, via_proc.inode, "the same socket both ways");
            assert_eq!(lookup(local, peer), Ok(Owner::Uid(running_uid())));
        }
    }

    #[test]
    fn a_dual_stack_listener_finds_ipv4_peers() {
        let Ok(listener) = TcpListener::bind("[::]:0") else { return };
        let port = listener.local_addr().unwrap().port();
        let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        assert!(peer.is_ipv6(), "{peer}");
        assert_eq!(lookup(accepted.local_addr().unwrap(), peer), Ok(Owner::Uid(running_uid())));
    }

    #[test]
    fn a_closed_peer_has_no_owner_and_is_refused() {
        let (local, peer, client, _a) = pair("127.0.0.1:0");
        drop(client);
        let found = lookup(local, peer);
        // FIN_WAIT2 as a mini-socket, or gone: never "uid 0".
        assert!(matches!(found, Err(LookupError::Closing) | Ok(Owner::NotLocal)), "{found:?}");
        let access = Gate::default().check(local, peer);
        let refusal = access.refusal().unwrap().to_string();
        assert!(refusal.contains("allow_users = [\"*\"]"), "{refusal}");
    }

    #[test]
    fn the_running_user_is_served_and_others_are_refused_with_the_fix() {
        let (local, peer, _c, _a) = pair("127.0.0.1:0");
        assert!(matches!(Gate::default().check(local, peer), Access::Allowed { uid: Some(u) } if u == running_uid()));
        let me = running_uid();
        let other = if me == 65534 { 65533 } else { 65534 };
        let alice = User { uid: 4242, name: Some("alice".into()) };
        let users = AllowUsers::listed(vec![alice]);
        assert!(users.allows(me) && users.allows(0) && users.allows(4242) && !users.allows(other));
        assert!(AllowUsers::any().allows(other));
        let refusal = Refusal::not_allowed(User { uid: other, name: Some("nobody".into()) }, &users);
        let text = refusal.to_string();
        assert!(text.contains("uid 65534") && text.contains("allow_users = [\"alice\", \"nobody\"]"), "{text}");
        let resp = refusal.response();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(resp.headers()[header::CONNECTION], "close");
    }

    #[test]
    fn a_peer_of_no_socket_on_this_host_is_remote_unless_on_loopback() {
        // A 4-tuple no socket has: as if another machine connected.
        let local: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let (l, p, _c, _a) = pair("127.0.0.1:0");
        let _ = lookup(l, p); // netlink has answered once
        assert_eq!(lookup(local, "127.0.0.1:10".parse().unwrap()), Ok(Owner::NotLocal));
        assert!(Gate::default().check(local, "127.0.0.1:10".parse().unwrap()).refusal().is_some());
        let remote: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        assert!(Gate::default().check("192.0.2.1:8787".parse().unwrap(), remote).refusal().is_none());
    }
}
