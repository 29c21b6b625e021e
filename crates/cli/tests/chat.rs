//! `deputy chat`, driven line by line through a pipe.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected states"
)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;
use support::{KillOnDrop, exit_within};

/// An orchestrator that starts a researcher in the background and answers
/// at once; the researcher takes `LATENCY` ms.
const CONFIG_TEMPLATE: &str = r#"
[agent.subagents]
max_concurrent = 4

[providers.lead]
kind = "scripted"

[[providers.lead.turns]]
when = "^Research"
tool_calls = [{ name = "spawn_agent", arguments = { agent = "researcher", task = "dig into it", background = true } }]

[[providers.lead.turns]]
when = "^Research"
text = "Started a researcher in the background."

[[providers.lead.turns]]
when = '(?s)finished since:\n- task \S+ \(researcher, completed\): \[offline.*User: What came back'
text = "Here is the researcher's result."

[[providers.lead.turns]]
when = "What came back"
text = "Here is what came back."

[providers.slow]
kind = "scripted"
latency_ms = LATENCY

[agents.orchestrator]
provider = "lead"
subagents = ["researcher"]

[agents.researcher]
provider = "slow"
"#;

struct Chat {
    child: KillOnDrop,
    stdin: ChildStdin,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

fn collect(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut sink = sink.lock().unwrap();
            sink.push_str(&line);
            sink.push('\n');
        }
    });
    text
}

impl Chat {
    /// A session whose researcher takes `latency_ms` per reply.
    fn start(latency_ms: u64) -> Self {
        Self::with_config(&CONFIG_TEMPLATE.replace("LATENCY", &latency_ms.to_string()))
    }

    fn with_config(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("deputy.toml"), config).unwrap();
        let mut child = KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_deputy"))
                .arg("chat")
                .current_dir(dir.path())
                .env("HOME", dir.path())
                .env_remove("DEPUTY_CONFIG")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let stdin = child.0.stdin.take().unwrap();
        let stdout = collect(child.0.stdout.take().unwrap());
        let stderr = collect(child.0.stderr.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
            stderr,
            _dir: dir,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Sends `/quit` and waits, for at most 20 s, for the session to end
    /// with success.
    fn quit(&mut self) {
        self.send("/quit");
        let status = exit_within(&mut self.child.0, Duration::from_secs(20)).unwrap_or_else(|| {
            panic!(
                "still running 20 s after /quit; stderr:\n{}",
                self.stderr.lock().unwrap()
            )
        });
        assert!(
            status.success(),
            "ended with {status} after /quit; stderr:\n{}",
            self.stderr.lock().unwrap()
        );
    }

    /// Waits until stdout or stderr holds `wanted`; returns that stream.
    fn expect(&self, wanted: &str) -> String {
        self.expect_times(wanted, 1)
    }

    /// Waits until stdout or stderr holds `wanted` at least `times` times;
    /// returns that stream.
    fn expect_times(&self, wanted: &str, times: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            for stream in [&self.stdout, &self.stderr] {
                let text = stream.lock().unwrap().clone();
                if text.matches(wanted).count() >= times {
                    return text;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "not {times} times {wanted:?} in\nstdout:\n{}\nstderr:\n{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        );
    }
}

#[test]
fn background_tasks_keep_running_between_prompts() {
    // Long enough that the task is surely still running at every check.
    let mut chat = Chat::start(60_000);
    chat.expect("deputy chat with orchestrator");
    chat.send("Research the Go memory model");
    chat.expect("Started a researcher in the background.");
    chat.expect("(1 background tasks still running; /tasks shows them)");

    chat.send("/tasks");
    chat.expect("  researcher   running");

    // The next prompt is answered while the researcher goes on.
    chat.send("What came back?");
    chat.expect("Here is what came back.");
    chat.send("/tasks");
    chat.expect_times("  researcher   running", 2);
    chat.send("/settings");
    chat.expect("max_concurrent = 4");
    chat.quit();
    chat.expect("stopped 1 background tasks still running");
}

#[test]
fn a_finished_background_task_is_announced_and_read_with_wait() {
    // Long enough to finish after the prompt that started it has been
    // answered, since a notice is held back while a prompt runs; the
    // footer for a task still running is checked in the test above.
    let mut chat = Chat::start(5_000);
    chat.expect("deputy chat with orchestrator");
    chat.send("Research the Go memory model");
    chat.expect("Started a researcher in the background.");

    // The notice names the task; /wait reads its result.
    let stderr = chat.expect("researcher completed; /wait ");
    let short = stderr
        .lines()
        .find_map(|line| {
            line.strip_suffix(" shows it]")?
                .rsplit_once("/wait ")
                .map(|(_, id)| id)
        })
        .unwrap()
        .to_owned();
    chat.send(&format!("/wait {short}"));
    chat.expect(&format!("{short} completed: [offline: scripted provider"));

    // The user read it first, and the orchestrator that started it still
    // gets it, with the next prompt.
    chat.send("What came back?");
    chat.expect("Here is the researcher's result.");
    chat.quit();
}

#[test]
fn a_long_background_result_reaches_the_next_prompt_cut_with_a_note() {
    // The researcher answers 300 characters; prompts carry 100 of each
    // background result. The orchestrator's script answers apart when its
    // prompt holds exactly the cut result and the note.
    let config = format!(
        r#"
[agent]
max_result_chars = 100

[providers.lead]
kind = "scripted"

[[providers.lead.turns]]
when = "^Research"
tool_calls = [{{ name = "spawn_agent", arguments = {{ agent = "researcher", task = "dig into it", background = true }} }}]

[[providers.lead.turns]]
when = "^Research"
text = "Started a researcher in the background."

[[providers.lead.turns]]
when = '\(researcher, completed\): a{{100}}\n  \[result cut: the first 100 of 300 characters; the user can read it whole with /wait [0-9a-f]{{8}}\]\n\nUser: What came back'
text = "The result came cut, with a note."

[[providers.lead.turns]]
when = "What came back"
text = "Here is what came back."

[providers.wordy]
kind = "scripted"
latency_ms = 2000

[[providers.wordy.turns]]
text = "{answer}"

[agents.orchestrator]
provider = "lead"
subagents = ["researcher"]

[agents.researcher]
provider = "wordy"
"#,
        answer = "a".repeat(300)
    );
    let mut chat = Chat::with_config(&config);
    chat.send("Research the Go memory model");
    chat.expect("Started a researcher in the background.");
    chat.expect("researcher completed; /wait ");
    chat.send("What came back?");
    chat.expect("The result came cut, with a note.");
    chat.quit();
}

#[test]
fn stop_and_bad_commands_answer_in_sentences() {
    // Long enough that the task is surely still running at /stop.
    let mut chat = Chat::start(60_000);
    chat.send("Research Rust");
    chat.expect("Started a researcher in the background.");
    chat.send("/tasks");
    let listing = chat.expect("  researcher   running");
    let short = listing
        .lines()
        .find(|line| line.contains("  researcher   running"))
        .and_then(|line| line.split_whitespace().next())
        .unwrap()
        .to_owned();
    chat.send(&format!("/stop {short}"));
    chat.expect(&format!("{short} cancelled"));
    chat.send("/stop ffffffff");
    chat.expect("no task ffffffff; /tasks lists them");
    chat.send("/frobnicate");
    chat.expect("unknown command /frobnicate");
    chat.quit();
}
