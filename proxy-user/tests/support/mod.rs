//! Helpers shared by the integration tests. Each test crate uses a part of
//! them, hence the `dead_code` allowance.
#![allow(dead_code, reason = "shared by several test crates; each uses a part")]

pub mod apiserver;
