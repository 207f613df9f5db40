//! The authorization endpoint (RFC 6749 §3.1, §4.1.1): the authorization code flow with
//! PKCE S256 (RFC 7636), no login page.
//!
//! `/authorize` signs the configured user in (`[demo_as] user`) and approves at once. The
//! client is one of the live routes' clients; its redirect URI must be one listed for it in
//! `[demo_as] redirect_uris` (exact match, any port for loopback ones, RFC 8252 §7.3) or,
//! when none is listed, a loopback URI on any port: `http://127.0.0.1`, `http://[::1]` or
//! `http://localhost` (RFC 8252 §7.3). A bad `client_id` or `redirect_uri` gets a 400 page
//! and never a redirect (RFC 6749 §4.1.2.1); every other error goes back to the redirect URI
//! with `error`, `state` and `iss` (RFC 9207). Codes are single use and live
//! [`CODE_LIFETIME`](super::grants::CODE_LIFETIME) seconds.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use url::{Host, Url};

use super::grants::{is_s256_challenge, Authorization, Code, CODE_LIFETIME};
use super::{now, read_body, Answer, DemoAs};
use crate::body::full;
use crate::rewrite::form::Form;

/// An RFC 8252 §7.3 loopback redirect URI: `http` to 127.0.0.1, [::1] or localhost.
fn is_loopback_redirect(url: &Url) -> bool {
    url.scheme() == "http"
        && match url.host() {
            Some(Host::Ipv4(ip)) => ip == std::net::Ipv4Addr::LOCALHOST,
            Some(Host::Ipv6(ip)) => ip == std::net::Ipv6Addr::LOCALHOST,
            Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        }
}

/// Whether `sent` matches `registered`: the same string (RFC 6749 §3.1.2.3, RFC 9700
/// §4.1.3), or, for a loopback URI, the same but for the port (RFC 8252 §7.3).
fn matches_registered(registered: &str, sent: &Url, sent_text: &str) -> bool {
    if registered == sent_text {
        return true;
    }
    let Ok(registered) = Url::parse(registered) else {
        return false;
    };
    is_loopback_redirect(&registered)
        && is_loopback_redirect(sent)
        && registered.host() == sent.host()
        && registered.path() == sent.path()
        && registered.query() == sent.query()
}

/// The redirect URI to use for `client_id`: `sent`, checked against `registered` (or the
/// loopback default), or the one registered URI when none was sent (RFC 6749 §3.1.2.3).
/// `Err` says why it cannot be used.
pub(super) fn redirect_uri(
    registered: &BTreeMap<String, Vec<String>>,
    client_id: &str,
    sent: Option<&str>,
) -> Result<Url, String> {
    let list = registered.get(client_id);
    let Some(text) = sent else {
        return match list.map(Vec::as_slice) {
            Some([only]) => Url::parse(only).map_err(|e| format!("registered redirect_uri {only:?}: {e}")),
            Some(_) => Err(format!(
                "redirect_uri is required: client {client_id:?} has several registered (RFC 6749 §3.1.2.3)"
            )),
            None => Err(format!(
                "redirect_uri is required: client {client_id:?} has none registered, so any loopback URI may be used"
            )),
        };
    };
    let url = Url::parse(text).map_err(|e| format!("redirect_uri {text:?} is not an absolute URI: {e}"))?;
    if url.fragment().is_some() {
        return Err(format!("redirect_uri {text:?} has a fragment (RFC 6749 §3.1.2)"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("redirect_uri {text:?} carries user information"));
    }
    match list {
        Some(list) if list.iter().any(|r| matches_registered(r, &url, text)) => Ok(url),
        Some(list) => Err(format!(
            "redirect_uri {text:?} is not registered for client {client_id:?} ([demo_as] redirect_uris lists {list:?})"
        )),
        None if is_loopback_redirect(&url) => Ok(url),
        None => Err(format!(
            "redirect_uri {text:?} is not a loopback URI (http://127.0.0.1, http://[::1] or http://localhost, any port: \
             RFC 8252 §7.3); list it for client {client_id:?} in [demo_as] redirect_uris"
        )),
    }
}

/// The 400 page for a request that cannot be redirected (RFC 6749 §4.1.2.1).
fn error_page(error: &str, description: &str) -> Answer {
    let escape = |s: &str| {
        s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
    };
    let body = format!(
        "<!doctype html>\n<meta charset=\"utf-8\">\n<title>tokenrelay demo AS: {e}</title>\n\
         <h1>Authorization request refused: {e}</h1>\n<p>{d}</p>\n\
         <p>The demo AS does not redirect back when the client or its redirect_uri is in doubt (RFC 6749 §4.1.2.1).</p>\n",
        e = escape(error),
        d = escape(description)
    );
    let mut resp = http::Response::new(full(Bytes::from(body)));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A 302 to `url` with `params` added to its query (RFC 6749 §4.1.2: existing query kept).
fn redirect(mut url: Url, params: &[(&str, &str)]) -> Answer {
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in params {
            query.append_pair(name, value);
        }
    }
    let mut resp = http::Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::FOUND;
    match HeaderValue::from_str(url.as_str()) {
        Ok(location) => {
            resp.headers_mut().insert(header::LOCATION, location);
        }
        Err(_) => return error_page("invalid_request", "the redirect URI cannot be sent in a Location header"),
    }
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

impl DemoAs {
    /// `GET` or `POST /authorize` (RFC 6749 §3.1: GET required, POST allowed; OIDC Core
    /// §3.1.2.1 wants both).
    pub(super) async fn authorize(&self, req: Request<Incoming>) -> Answer {
        let (parts, body) = req.into_parts();
        let params = if parts.method == Method::POST {
            match read_body(body).await {
                Ok(bytes) => bytes,
                Err(resp) => return resp,
            }
        } else {
            Bytes::from(parts.uri.query().unwrap_or_default().to_string())
        };
        self.authorize_params(&Form::parse(&params), now())
    }

    /// The authorization request in `params` at `now`: a redirect with a code, a redirect
    /// with an error, or a 400 page.
    pub(super) fn authorize_params(&self, params: &Form, now: u64) -> Answer {
        // RFC 6749 §4.1.2.1: without a valid client and redirect URI, tell the user, not the URI.
        let client_id = match params.get("client_id") {
            Ok(Some(id)) => id,
            Ok(None) => return error_page("invalid_request", "no client_id"),
            Err(e) => return error_page("invalid_request", &e.to_string()),
        };
        let snapshot = self.snapshot.borrow().clone();
        if super::client_route(&snapshot, &client_id).is_none() {
            return error_page(
                "invalid_request",
                &format!("unknown client {client_id:?} (no route in proxy.toml has client.id = {client_id:?})"),
            );
        }
        let sent = match params.get("redirect_uri") {
            Ok(sent) => sent,
            Err(e) => return error_page("invalid_request", &e.to_string()),
        };
        let target = match redirect_uri(&self.redirect_uris, &client_id, sent.as_deref()) {
            Ok(url) => url,
            Err(why) => return error_page("invalid_request", &why),
        };
        let state = params.get("state").ok().flatten();
        let issuer = self.issuer().to_string();
        let fail = |error: &str, description: &str| {
            let mut out = vec![("error", error), ("error_description", description)];
            if let Some(state) = &state {
                out.push(("state", state));
            }
            out.push(("iss", &issuer));
            redirect(target.clone(), &out)
        };
        let names: Vec<String> = params.names().map(str::to_string).collect();
        if let Err(e) = params.check_single(names.iter().map(String::as_str)) {
            return fail("invalid_request", &e.to_string());
        }
        let get = |n: &str| params.get(n).ok().flatten();
        if get("request").is_some() {
            return fail("request_not_supported", "the demo AS takes no request objects");
        }
        if get("request_uri").is_some() {
            return fail("request_uri_not_supported", "the demo AS takes no request_uri (no PAR either)");
        }
        match get("response_type").as_deref() {
            Some("code") => {}
            None => return fail("invalid_request", "no response_type"),
            Some(other) => {
                return fail(
                    "unsupported_response_type",
                    &format!("response_type {other:?}: the demo AS answers response_type=code only"),
                )
            }
        }
        if let Some(mode) = get("response_mode").filter(|m| m != "query") {
            return fail("invalid_request", &format!("response_mode {mode:?}: the demo AS answers in the query only"));
        }
        let Some(code_challenge) = get("code_challenge") else {
            return fail("invalid_request", "PKCE is required: send code_challenge with code_challenge_method=S256");
        };
        match get("code_challenge_method").as_deref() {
            Some("S256") => {}
            None | Some("plain") => {
                return fail("invalid_request", "code_challenge_method must be S256 (plain is not accepted)")
            }
            Some(other) => {
                return fail("invalid_request", &format!("code_challenge_method {other:?}: only S256 is supported"))
            }
        }
        if !is_s256_challenge(&code_challenge) {
            return fail("invalid_request", "code_challenge is not base64url(SHA-256(code_verifier)) (RFC 7636 §4.2)");
        }
        let dpop_jkt = get("dpop_jkt");
        if dpop_jkt.as_deref().is_some_and(|j| !is_s256_challenge(j)) {
            return fail("invalid_request", "dpop_jkt is not an RFC 7638 SHA-256 thumbprint (RFC 9449 §10)");
        }
        let code = Code {
            authz: Authorization {
                client_id,
                sub: self.user.clone(),
                scope: get("scope").map(|s| s.split(' ').filter(|v| !v.is_empty()).collect::<Vec<_>>().join(" ")),
                auth_time: now,
            },
            // What the token request must repeat is the URI as sent, not as parsed.
            redirect_uri: sent.clone().unwrap_or_else(|| target.as_str().to_string()),
            redirect_uri_sent: sent.is_some(),
            code_challenge,
            nonce: get("nonce"),
            dpop_jkt,
            exp: now.saturating_add(CODE_LIFETIME),
        };
        let value = match self.ledger() {
            Ok(mut ledger) => ledger.add_code(code, now),
            Err(_) => return fail("server_error", "the demo AS's state is unavailable"),
        };
        let mut out = vec![("code", value.expose())];
        if let Some(state) = &state {
            out.push(("state", state));
        }
        out.push(("iss", &issuer));
        redirect(target, &out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn registered() -> BTreeMap<String, Vec<String>> {
        let mut map = BTreeMap::new();
        map.insert(
            "web".to_string(),
            vec!["https://app.example/cb".to_string(), "http://127.0.0.1/native".to_string()],
        );
        map.insert("one".to_string(), vec!["com.example.app:/callback".to_string()]);
        map
    }

    #[test]
    fn loopback_uris_on_any_port_by_default() {
        let r = registered();
        for ok in [
            "http://127.0.0.1:53117/cb",
            "http://127.0.0.1/cb?x=1",
            "http://[::1]:8080/",
            "http://localhost:3000/callback",
            "http://LOCALHOST:3000/callback",
        ] {
            assert!(redirect_uri(&r, "public", Some(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "https://app.example/cb",
            "https://127.0.0.1:8443/cb",
            "http://127.0.0.2/cb",
            "http://127.0.0.1.evil.example/cb",
            "http://localhost.evil.example/cb",
            "http://user@127.0.0.1/cb",
            "http://127.0.0.1:5000/cb#frag",
            "/cb",
            "not a uri",
        ] {
            assert!(redirect_uri(&r, "public", Some(bad)).is_err(), "{bad}");
        }
        assert!(redirect_uri(&r, "public", None).is_err(), "no default without a registration");
    }

    #[test]
    fn registered_uris_match_exactly_except_loopback_ports() {
        let r = registered();
        assert!(redirect_uri(&r, "web", Some("https://app.example/cb")).is_ok());
        assert!(redirect_uri(&r, "web", Some("http://127.0.0.1:49152/native")).is_ok(), "RFC 8252 §7.3");
        for bad in [
            "https://app.example/cb/",
            "https://app.example/cb?x=1",
            "https://app.example:8443/cb",
            "https://APP.example/cb2",
            "http://127.0.0.1:49152/other",
            "http://localhost:3000/callback",
        ] {
            assert!(redirect_uri(&r, "web", Some(bad)).is_err(), "{bad}");
        }
        assert!(redirect_uri(&r, "web", None).is_err(), "two registered: must be sent");
        assert_eq!(redirect_uri(&r, "one", None).unwrap().as_str(), "com.example.app:/callback");
    }
}
