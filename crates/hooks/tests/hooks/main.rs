//! Tests of the built-in hooks, each driven through a real registry or
//! called with real events.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected states"
)]

mod billing;
mod command;
mod config;
mod metrics;
mod pairs;
mod support;
mod webhook;
