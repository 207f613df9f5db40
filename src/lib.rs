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
//! only one that touches rcgen. [`reload`] watches the config and every file it names and
//! publishes a new snapshot, whole, when they change.
//!
//! Two ways in: reverse mode over [`server::serve`] (and over HTTPS with a leaf
//! from the local CA, [`local_ca`]), and [`forward`] mode, an `HTTPS_PROXY` that intercepts the hosts
//! routes claim and feeds their requests into the same [`proxy`] pipeline.

pub mod app;
pub mod assertion;
pub mod body;
pub mod cli;
pub mod config;
pub mod demo_as;
pub mod discovery;
pub mod endpoints;
pub mod error;
pub mod explain;
pub mod forward;
pub mod jose;
pub mod keys;
pub mod local_ca;
pub mod peer;
pub mod pki;
pub mod provision;
pub mod proxy;
pub mod redact;
pub mod reload;
pub mod rewrite;
pub mod server;
pub mod snapshot;
pub mod status;
pub mod upstream;
pub mod urlnorm;
