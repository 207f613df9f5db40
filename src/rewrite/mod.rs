//! The rewrite steps, one file each, applied in this fixed order:
//! [`hop`] (hop-by-hop headers) → [`headers`] / [`params`] (route rules) →
//! [`client_auth`] → [`dpop`]. [`form`] is the byte-exact form editor they share.
//!
//! Each step is a plain function over headers and the parsed form; time and randomness come
//! in as arguments, so every step is unit-tested without a network.

pub mod client_auth;
pub mod dpop;
pub mod form;
pub mod headers;
pub mod hop;
pub mod params;
