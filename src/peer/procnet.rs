//! The fallback for kernels without inet_diag for TCP: `/proc/net/tcp` and `/proc/net/tcp6`,
//! one line per socket with its addresses, state, uid and inode (proc(5)). Reading them costs
//! time in proportion to the sockets on the machine, so this runs only when netlink cannot
//! answer.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::Socket;

/// The socket whose own address is `this` and whose peer is `that`, if listed. IPv4 sockets
/// are in `tcp`, or in `tcp6` with IPv4-mapped addresses (a dual-stack socket).
pub fn find(this: SocketAddr, that: SocketAddr) -> io::Result<Option<Socket>> {
    let mut searched = Vec::new();
    if let (IpAddr::V4(_), IpAddr::V4(_)) = (this.ip(), that.ip()) {
        match search("/proc/net/tcp", &entry(this), &entry(that)) {
            Ok(Some(s)) => return Ok(Some(s)),
            Ok(None) => {}
            Err(e) => searched.push(e),
        }
    }
    let (this6, that6) = (mapped(this), mapped(that));
    match search("/proc/net/tcp6", &entry(this6), &entry(that6)) {
        Ok(found) => Ok(found),
        // No IPv6 in this kernel: only an error when tcp could not be read either.
        Err(e) if e.kind() == io::ErrorKind::NotFound && searched.is_empty() && this.is_ipv4() => Ok(None),
        Err(e) => Err(e),
    }
}

fn mapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    }
}

/// An address as the kernel prints it: each 32-bit word of the address as a host-order
/// integer in hex, then `:` and the port in hex (`0100007F:1F90` is 127.0.0.1:8080 on a
/// little-endian machine).
fn entry(a: SocketAddr) -> String {
    let words: Vec<String> = match a.ip() {
        IpAddr::V4(ip) => vec![format!("{:08X}", u32::from_ne_bytes(ip.octets()))],
        IpAddr::V6(ip) => words(ip),
    };
    format!("{}:{:04X}", words.concat(), a.port())
}

fn words(ip: Ipv6Addr) -> Vec<String> {
    ip.octets().chunks_exact(4).map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))).collect()
}

fn search(file: &str, this: &str, that: &str) -> io::Result<Option<Socket>> {
    let text = std::fs::read_to_string(file)?;
    Ok(text.lines().skip(1).find_map(|line| parse_line(line, this, that)))
}

/// `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`, when `local` and `rem`
/// are `this` and `that`.
fn parse_line(line: &str, this: &str, that: &str) -> Option<Socket> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 || !f[1].eq_ignore_ascii_case(this) || !f[2].eq_ignore_ascii_case(that) {
        return None;
    }
    Some(Socket { state: u8::from_str_radix(f[3], 16).ok()?, uid: f[7].parse().ok()?, inode: f[9].parse().ok()? })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    #[cfg(target_endian = "little")]
    fn addresses_are_written_as_the_kernel_prints_them() {
        assert_eq!(entry("127.0.0.1:8080".parse().unwrap()), "0100007F:1F90");
        assert_eq!(entry("[::1]:8787".parse().unwrap()), "00000000000000000000000001000000:2253");
        assert_eq!(entry(mapped("127.0.0.1:80".parse().unwrap())), "0000000000000000FFFF00000100007F:0050");
    }

    #[test]
    fn a_line_is_matched_on_both_addresses() {
        let line = "   2: 0100007F:E623 0100007F:9820 01 00000000:00000000 00:00000000 00000000  1000        0 30155 1 0 20 0 0 10 -1";
        let s = parse_line(line, "0100007F:E623", "0100007F:9820").unwrap();
        assert_eq!((s.state, s.uid, s.inode), (1, 1000, 30155));
        assert!(parse_line(line, "0100007F:9820", "0100007F:E623").is_none());
    }
}
