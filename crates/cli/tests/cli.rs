//! The built `deputy` binary, run as users run it: offline, in a fresh
//! directory, with good and bad config files.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected states"
)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

mod support;
use support::{KillOnDrop, exit_within};

/// `deputy` with `args`, run in `dir` with no inherited config.
fn deputy(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deputy"))
        .args(args)
        .current_dir(dir)
        .env_remove("DEPUTY_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A small offline config with fast replies, plus `extra`.
fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("deputy.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[providers.offline]
kind = "scripted"
latency_ms = 20

[agents.orchestrator]
provider = "offline"
subagents = ["researcher"]

[agents.researcher]
provider = "offline"
{extra}"#
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_fresh_directory_runs_the_built_in_offline_demo() {
    let dir = tempfile::tempdir().unwrap();
    let output = deputy(dir.path(), &["run", "Compare Go and Rust"]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("no config file"), "{stderr}");
    assert!(stderr.contains("built-in offline demo"), "{stderr}");
    // The answer is on stdout; progress and the summary are on stderr.
    assert!(
        stdout.contains("Synthesis for \"Compare Go and Rust\", from 2 sub-agent results"),
        "{stdout}"
    );
    assert!(!stdout.contains("started "), "{stdout}");
    assert!(stderr.contains("started "), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|line| line.starts_with("done: 2 sub-agent tasks, 2 completed;")),
        "{stderr}"
    );
    assert!(stderr.contains("cost $0.0000"), "{stderr}");
    // Nothing was written into the directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn json_prints_one_document_with_the_answer_and_the_report() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "");
    let output = deputy(dir.path(), &["run", "--json", "Compare Go and Rust"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(document["ok"], true);
    assert!(
        document["answer"]
            .as_str()
            .unwrap()
            .contains("from 2 sub-agent results")
    );
    assert_eq!(document["report"]["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(document["report"]["tasks"][0]["status"], "completed");
    assert_eq!(document["cost_usd"], 0.0);
    assert!(
        !text(&output.stderr).contains("no config file"),
        "the file in the directory is used"
    );
}

#[test]
fn config_errors_exit_2_and_name_line_key_and_nearest_name() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "\n[agent.subagents]\nmax_concurent = 4\n");
    let output = deputy(dir.path(), &["run", "hi"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("deputy.toml: line 14, column 1, at agent.subagents.max_concurent"),
        "{stderr}"
    );
    assert!(
        stderr.contains("did you mean `max_concurrent`?"),
        "{stderr}"
    );
    assert!(stderr.contains("14 | max_concurent = 4"), "{stderr}");

    write_config(
        dir.path(),
        "\n[agent.subagents]\nmax_concurrent = \"four\"\n",
    );
    let stderr = text(&deputy(dir.path(), &["run", "hi"]).stderr);
    assert!(stderr.contains("line 14, column 18"), "{stderr}");
    assert!(stderr.contains("invalid type: string \"four\""), "{stderr}");

    write_config(
        dir.path(),
        "max_turns = 0\n\n[agents.writer]\nprovider = \"ofline\"\n\n[agent.subagents]\nmax_concurrent = 0\n",
    );
    let output = deputy(dir.path(), &["run", "hi"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("3 problems"), "{stderr}");
    assert!(
        stderr.contains("agents.researcher.max_turns must be between 1 and 1000, got 0"),
        "{stderr}"
    );
    assert!(stderr.contains("agents.writer.provider: there is no [providers.ofline]; known providers: offline; did you mean \"offline\"?"), "{stderr}");
    assert!(
        stderr.contains("agent.subagents.max_concurrent must be at least 1, got 0"),
        "{stderr}"
    );
}

#[test]
fn missing_and_empty_files_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let output = deputy(dir.path(), &["run", "-c", "nowhere.toml", "hi"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("nowhere.toml: no such file (given by -c/--config)"));

    let output = Command::new(env!("CARGO_BIN_EXE_deputy"))
        .args(["run", "hi"])
        .current_dir(dir.path())
        .env("DEPUTY_CONFIG", dir.path().join("gone.toml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("given by DEPUTY_CONFIG"));

    std::fs::write(dir.path().join("deputy.toml"), "").unwrap();
    let output = deputy(dir.path(), &["run", "hi"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("the file is empty"));
}

#[test]
fn an_unset_key_variable_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        "\n[providers.openai]\nkind = \"openai\"\nmodel = \"gpt-4o\"\napi_key_env = \"DEPUTY_TEST_UNSET_KEY\"\n\n[agents.writer]\nprovider = \"openai\"\n",
    );
    let output = deputy(dir.path(), &["run", "hi"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("DEPUTY_TEST_UNSET_KEY is not set"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_agent_is_a_usage_error_with_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "");
    let output = deputy(dir.path(), &["run", "--agent", "reseacher", "hi"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("did you mean \"researcher\"?"), "{stderr}");
}

#[test]
fn a_failed_run_exits_1_after_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port, and nothing retries.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    write_config(
        dir.path(),
        &format!(
            "\n[providers.down]\nkind = \"openai\"\nmodel = \"gpt-4o\"\napi_key = \"sk-test\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\nmax_retries = 0\n\n[agents.broken]\nprovider = \"down\"\n"
        ),
    );
    let output = deputy(dir.path(), &["run", "--agent", "broken", "hi"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("done: 0 sub-agent tasks"), "{stderr}");
    assert!(stderr.contains("error: "), "{stderr}");
    assert!(!stderr.contains("sk-test"), "the key leaked: {stderr}");
}

#[test]
fn config_check_prints_the_effective_settings_or_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let example = deputy(dir.path(), &["config", "example"]);
    assert!(example.status.success());
    std::fs::write(dir.path().join("mine.toml"), &example.stdout).unwrap();

    let output = deputy(dir.path(), &["config", "check", "mine.toml"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(stdout.starts_with("ok: mine.toml"), "{stdout}");
    assert!(stdout.contains("max_concurrent = 2"), "{stdout}");
    assert!(
        stdout.contains("[agents.researcher] provider offline"),
        "{stdout}"
    );

    std::fs::write(dir.path().join("bad.toml"), "[agent]\nname = 5\n").unwrap();
    let output = deputy(dir.path(), &["config", "check", "bad.toml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("line 2, column 8"),
        "{}",
        text(&output.stderr)
    );

    // With no file at all, check describes the built-in config.
    let output = deputy(dir.path(), &["config", "check"]);
    assert!(text(&output.stdout).starts_with("ok: the built-in offline config"));
}

#[test]
fn the_example_config_runs_offline_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let example = deputy(dir.path(), &["config", "example"]);
    std::fs::write(dir.path().join("deputy.toml"), &example.stdout).unwrap();
    let output = deputy(dir.path(), &["run", "Compare Go and Rust"]);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("done: 2 sub-agent tasks, 2 completed"),
        "{stderr}"
    );
}

#[test]
fn ctrl_c_cancels_the_run_and_still_prints_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("deputy.toml"),
        r#"
[providers.fast]
kind = "scripted"

[providers.slow]
kind = "scripted"
latency_ms = 60000

[agents.orchestrator]
provider = "fast"
subagents = ["researcher"]

[agents.researcher]
provider = "slow"
"#,
    )
    .unwrap();
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_deputy"))
            .args(["run", "Compare Go and Rust"])
            .current_dir(dir.path())
            .env_remove("DEPUTY_CONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Both researchers have started once their lines are out; then interrupt.
    let stderr = child.0.stderr.take().unwrap();
    let (started, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("  started  ") {
                let _ = started.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    for _ in 0..2 {
        lines.recv_timeout(Duration::from_secs(20)).unwrap();
    }
    let status = Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = exit_within(&mut child.0, Duration::from_secs(30))
        .expect("deputy run did not stop within 30 s of ctrl-c");
    let stderr = reader.join().unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("interrupted: cancelling the run"),
        "{stderr}"
    );
    assert!(
        stderr.contains("done: 2 sub-agent tasks, 0 completed, 2 cancelled"),
        "{stderr}"
    );
}
