//! tokenrelay: a local developer proxy that signs OAuth 2.0 token requests.
//!
//! An app sends a plain token request to `http://127.0.0.1:8787/<route>/token`; tokenrelay
//! adds what the real authorization server demands (a `private_key_jwt` client assertion,
//! a DPoP proof, an mTLS client certificate, extra headers and params) and relays it.
//!
//! Data flows one way:
//! `proxy.toml` → [`config`] (raw → checked) → [`snapshot`] (keys loaded, clients built) →
//! [`app`] publishes it → [`server`] accepts → [`proxy`] runs the [`rewrite`] steps →
//! [`upstream`] → response. [`jose`] is the only module that touches josekit, [`pki`] the
//! only one that touches rcgen.

pub mod app;
pub mod body;
pub mod cli;
pub mod config;
pub mod demo_as;
pub mod discovery;
pub mod error;
pub mod init;
pub mod jose;
pub mod keys;
pub mod pki;
pub mod proxy;
pub mod redact;
pub mod rewrite;
pub mod server;
pub mod snapshot;
pub mod upstream;
