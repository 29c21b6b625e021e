//! What the CLI's test binaries share: a `deputy` process that cannot
//! outlive its test, and a bounded wait for a process to exit.

#![allow(
    dead_code,
    reason = "each test binary includes this module and uses its own part of it"
)]

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// A child process that is killed and reaped when dropped, so a test that
/// fails half-way leaves no `deputy` running.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `child` to exit, for at most `limit`; `None` if it is still
/// running then, so a test fails rather than hangs.
pub(crate) fn exit_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
