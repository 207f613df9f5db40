//! The kernel's own answer for one TCP socket: a `NETLINK_SOCK_DIAG` request
//! `SOCK_DIAG_BY_FAMILY` for an exact 4-tuple, what `ss` uses. The kernel looks the socket up
//! in its established-connection hash and answers with one `inet_diag_msg` (or `ENOENT`),
//! synchronously, inside the `sendto` call: by the time `sendto` returns, the answer is queued.
//!
//! The structs below are hand-written from `linux/inet_diag.h` (`struct inet_diag_sockid`,
//! `struct inet_diag_req_v2`, `struct inet_diag_msg`) and `linux/sock_diag.h`
//! (`SOCK_DIAG_BY_FAMILY`); the `libc` crate has the netlink header but not these.

use std::io;
use std::mem::size_of;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use super::Socket;

/// `linux/sock_diag.h`: the message type of an inet_diag request and of its answers.
const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// `linux/inet_diag.h`: `INET_DIAG_NOCOOKIE`, "any socket with this 4-tuple".
const INET_DIAG_NOCOOKIE: u32 = !0;

/// `struct inet_diag_sockid` (`linux/inet_diag.h`). Ports and addresses are in network byte
/// order; an IPv4 address fills the first 4 bytes of its 16.
#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagSockId {
    /// `__be16 idiag_sport`: the port of the socket looked for.
    sport: [u8; 2],
    /// `__be16 idiag_dport`: the port it is connected to.
    dport: [u8; 2],
    /// `__be32 idiag_src[4]`.
    src: [u8; 16],
    /// `__be32 idiag_dst[4]`.
    dst: [u8; 16],
    /// `__u32 idiag_if`: 0, any interface.
    interface: u32,
    /// `__u32 idiag_cookie[2]`.
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2` (`linux/inet_diag.h`).
#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagReqV2 {
    /// `__u8 sdiag_family`: `AF_INET` or `AF_INET6`.
    family: u8,
    /// `__u8 sdiag_protocol`: `IPPROTO_TCP`.
    protocol: u8,
    /// `__u8 idiag_ext`: no extensions.
    ext: u8,
    pad: u8,
    /// `__u32 idiag_states`: a bit per TCP state; all of them.
    states: u32,
    id: InetDiagSockId,
}

/// A netlink header and the request, as sent.
#[repr(C)]
struct Request {
    header: libc::nlmsghdr,
    body: InetDiagReqV2,
}

/// `struct inet_diag_msg` (`linux/inet_diag.h`): 4 bytes, the socket id, then 5 `__u32`s.
const MSG_LEN: usize = 4 + size_of::<InetDiagSockId>() + 5 * 4;
/// Offsets in `struct inet_diag_msg`: `idiag_state`, `idiag_uid`, `idiag_inode`.
const STATE_AT: usize = 1;
const UID_AT: usize = 4 + size_of::<InetDiagSockId>() + 3 * 4;
const INODE_AT: usize = UID_AT + 4;

const HEADER_LEN: usize = size_of::<libc::nlmsghdr>();

/// The socket whose own address is `this` and whose peer is `that`; `Ok(None)` when the
/// kernel says `ENOENT` (no such socket, or no inet_diag support for TCP in this kernel).
pub fn find(this: SocketAddr, that: SocketAddr) -> io::Result<Option<Socket>> {
    let (family, src, dst) = match (this, that) {
        (SocketAddr::V4(a), SocketAddr::V4(b)) => (libc::AF_INET, v4(a.ip().octets()), v4(b.ip().octets())),
        (SocketAddr::V6(a), SocketAddr::V6(b)) => (libc::AF_INET6, a.ip().octets(), b.ip().octets()),
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "mixed address families")),
    };
    let request = Request {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            // No NLM_F_DUMP: an exact lookup of one socket.
            nlmsg_flags: libc::NLM_F_REQUEST as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        body: InetDiagReqV2 {
            family: family as u8,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: !0,
            id: InetDiagSockId {
                sport: this.port().to_be_bytes(),
                dport: that.port().to_be_bytes(),
                src,
                dst,
                interface: 0,
                cookie: [INET_DIAG_NOCOOKIE; 2],
            },
        },
    };
    let fd = open()?;
    send(&fd, &request)?;
    // Large enough for one answer (`inet_diag_msg` and its attributes) or an error.
    let mut buf = [0u8; 1024];
    let n = receive(&fd, &mut buf)?;
    parse(&buf[..n])
}

fn v4(octets: [u8; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&octets);
    out
}

fn open() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; a non-negative result is a descriptor we own.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send(fd: &OwnedFd, request: &Request) -> io::Result<()> {
    // SAFETY: `sockaddr_nl` is plain integers; all-zero is valid (pid 0: the kernel).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `request` and `kernel` are valid for the sizes given, for the whole call.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            (request as *const Request).cast(),
            size_of::<Request>(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The answer, queued during `sendto`; waits at most 100 ms in case a kernel ever answers
/// asynchronously.
fn receive(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    for attempt in 0..2 {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::WouldBlock || attempt == 1 {
            return Err(e);
        }
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid `pollfd`, as the count says.
        unsafe { libc::poll(&mut pfd, 1, 100) };
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, "no answer from NETLINK_SOCK_DIAG"))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// One answer: `inet_diag_msg` after the netlink header, or `NLMSG_ERROR` with `-errno`.
fn parse(buf: &[u8]) -> io::Result<Option<Socket>> {
    let short = || io::Error::new(io::ErrorKind::InvalidData, "short NETLINK_SOCK_DIAG answer");
    let kind = buf.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]])).ok_or_else(short)?;
    if kind == libc::NLMSG_ERROR as u16 {
        // `struct nlmsgerr`: `int error` (a negative errno; 0 is an acknowledgement).
        let errno = u32_at(buf, HEADER_LEN).ok_or_else(short)? as i32;
        return match -errno {
            libc::ENOENT => Ok(None),
            0 => Err(io::Error::new(io::ErrorKind::InvalidData, "NETLINK_SOCK_DIAG acknowledged without an answer")),
            e => Err(io::Error::from_raw_os_error(e)),
        };
    }
    if kind != SOCK_DIAG_BY_FAMILY || buf.len() < HEADER_LEN + MSG_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected NETLINK_SOCK_DIAG answer (type {kind})"),
        ));
    }
    let msg = &buf[HEADER_LEN..];
    Ok(Some(Socket {
        state: msg[STATE_AT],
        uid: u32_at(msg, UID_AT).ok_or_else(short)?,
        inode: u32_at(msg, INODE_AT).ok_or_else(short)?,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_structs_have_the_kernels_sizes() {
        // linux/inet_diag.h: sockid 48 bytes, req_v2 56, inet_diag_msg 72.
        assert_eq!(size_of::<InetDiagSockId>(), 48);
        assert_eq!(size_of::<InetDiagReqV2>(), 56);
        assert_eq!(MSG_LEN, 72);
        assert_eq!(size_of::<Request>(), 16 + 56);
    }
}
