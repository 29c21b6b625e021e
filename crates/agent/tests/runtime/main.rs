//! The agent runtime end to end, on test providers: no network.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected states"
)]

mod common;

mod delivery;
mod host_tasks;
mod limits;
mod loop_behaviour;
mod orchestration;
mod reload;
mod task_tools;
