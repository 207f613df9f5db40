//! Step 1: strip hop-by-hop headers (RFC 9110 §7.6.1) in both directions.

use http::header::{self, HeaderMap, HeaderName};

use crate::config::HOP_BY_HOP;

/// Removes hop-by-hop headers, including those named in `Connection`, plus
/// `Transfer-Encoding` (the body is re-framed by the next hop).
pub fn strip(headers: &mut HeaderMap) {
    // One pass over the names present (most messages carry none, or only `Connection`)
    // rather than a removal (parse, hash, probe) per hop-by-hop name.
    let hop = |name: &HeaderName| name == header::TRANSFER_ENCODING || HOP_BY_HOP.contains(&name.as_str());
    if !headers.keys().any(hop) {
        return;
    }
    let mut remove: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    remove.extend(headers.keys().filter(|name| hop(name)).cloned());
    for name in remove {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn removes_listed_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn leaves_end_to_end_headers_alone() {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        let before = h.clone();
        strip(&mut h);
        assert_eq!(h, before);
        h.insert("te", "trailers".parse().unwrap());
        strip(&mut h);
        assert_eq!(h, before);
    }
}
