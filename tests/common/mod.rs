#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod oidc;
pub mod proxy;
pub mod tls_upstream;
pub mod upstream;
