//! `deputy` in a terminal: it runs in a pseudo-terminal, and a terminal
//! emulator renders what it drew, so a test reads the screen a user would
//! see once the spinners have come and gone.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected states"
)]

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use portable_pty::{Child, CommandBuilder, PtySize, native_pty_system};

const ROWS: u16 = 200;
const COLS: u16 = 100;

/// A process in a pseudo-terminal, killed if the test ends before it does.
struct InTerminal {
    child: Box<dyn Child + Send + Sync>,
    input: Box<dyn std::io::Write + Send>,
    output: mpsc::Receiver<Vec<u8>>,
    drawn: Vec<u8>,
}

impl Drop for InTerminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl InTerminal {
    /// `deputy args...`, run in `dir`, with no config but what `dir` holds.
    fn start(dir: &Path, args: &[&str]) -> Self {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: ROWS,
                cols: COLS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .unwrap();
        let mut command = CommandBuilder::new(env!("CARGO_BIN_EXE_deputy"));
        command.args(args);
        command.cwd(dir);
        command.env("HOME", dir);
        command.env("TERM", "xterm-256color");
        command.env_remove("DEPUTY_CONFIG");
        let child = pair.slave.spawn_command(command).unwrap();
        // Only the child holds the terminal's other end now, so reading
        // ends when it exits.
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().unwrap();
        let input = pair.master.take_writer().unwrap();
        let (sender, output) = mpsc::channel();
        std::thread::spawn(move || {
            let _master = pair.master;
            let mut buffer = [0_u8; 4096];
            while let Ok(read @ 1..) = reader.read(&mut buffer) {
                if sender.send(buffer[..read].to_vec()).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            input,
            output,
            drawn: Vec::new(),
        }
    }

    fn send(&mut self, line: &str) {
        write!(self.input, "{line}\r").unwrap();
        self.input.flush().unwrap();
    }

    /// The screen as it is now, a line per row.
    fn screen(&mut self) -> String {
        while let Ok(bytes) = self.output.try_recv() {
            self.drawn.extend(bytes);
        }
        let mut parser = vt100::Parser::new(ROWS, COLS, 0);
        parser.process(&self.drawn);
        let rows: Vec<String> = parser.screen().rows(0, COLS).collect();
        rows.join("\n").trim_end().to_owned()
    }

    /// Waits until the screen shows `wanted`; returns the screen.
    fn expect(&mut self, wanted: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if screen.contains(wanted) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "no {wanted:?} on the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits, for at most 30 s, for the process to exit with success, and
    /// returns the last screen.
    fn finish(mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "exited with {status:?}:\n{}",
                    self.screen()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "still running after 30 s:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // What it wrote last may still be on its way.
        while let Ok(bytes) = self.output.recv_timeout(Duration::from_secs(2)) {
            self.drawn.extend(bytes);
        }
        self.screen()
    }
}

/// The rows that show a spinner's status line.
fn spinner_lines(screen: &str) -> Vec<&str> {
    screen
        .lines()
        .filter(|line| line.contains(" researcher running") || line.contains(" researcher queued"))
        .collect()
}

#[test]
fn the_answer_streamed_beside_spinners_stays_whole_and_no_spinner_is_left() {
    // The example config (the built-in one), with replies slow enough that
    // the spinners redraw many times after the text below is streamed.
    let dir = tempfile::tempdir().unwrap();
    let example = include_str!("../../../config.toml.example");
    assert!(example.contains("latency_ms = 300 "));
    let config = example.replace("latency_ms = 300 ", "latency_ms = 1500");
    std::fs::write(dir.path().join("deputy.toml"), config).unwrap();
    let run = InTerminal::start(dir.path(), &["run", "Compare Go and Rust"]);
    let screen = run.finish();
    // The demo orchestrator says this while its two researchers run; the
    // spinners' redraws used to wipe it.
    assert!(
        screen.contains(
            "[offline: scripted provider, no model was called] Waiting for the sub-agents' results."
        ),
        "the text streamed while spinners showed is gone:\n{screen}"
    );
    assert!(screen.contains("Synthesis for \"Compare Go and Rust\""));
    assert!(screen.contains("done: 2 sub-agent tasks, 2 completed"));
    assert_eq!(spinner_lines(&screen), Vec::<&str>::new(), "in:\n{screen}");
}

#[test]
fn a_chat_prompt_that_leaves_a_task_running_leaves_no_frozen_spinner() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("deputy.toml"),
        r#"
[providers.lead]
kind = "scripted"

[[providers.lead.turns]]
tool_calls = [{ name = "spawn_agent", arguments = { agent = "researcher", task = "dig into it", background = true } }]

[[providers.lead.turns]]
text = "Started a researcher in the background."

[providers.slow]
kind = "scripted"
latency_ms = 60000

[agents.orchestrator]
provider = "lead"
subagents = ["researcher"]

[agents.researcher]
provider = "slow"
"#,
    )
    .unwrap();
    let mut chat = InTerminal::start(dir.path(), &["chat"]);
    chat.expect("deputy chat with orchestrator");
    chat.send("Research the Go memory model");
    let screen = chat.expect("(1 background tasks still running; /tasks shows them)");
    assert_eq!(spinner_lines(&screen), Vec::<&str>::new(), "in:\n{screen}");
    chat.send("/quit");
    let screen = chat.finish();
    assert!(screen.contains("stopped 1 background tasks still running"));
    assert_eq!(spinner_lines(&screen), Vec::<&str>::new(), "in:\n{screen}");
}
