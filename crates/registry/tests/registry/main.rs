//! Behaviour of the registry through its public API. Every test runs on
//! paused Tokio time, so waits and deadlines are exact and instant.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] functions may unwrap too"
)]

mod admission;
mod delivery;
mod hooks;
mod lifecycle;
mod nesting;
mod retention;
mod selection;
mod stress;
mod support;
