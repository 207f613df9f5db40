#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod jwt;
pub mod oidc;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod tls_upstream;
pub mod upstream;
