//! `deputy serve`, run as a process and driven over HTTP on 127.0.0.1.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected states"
)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

mod support;
use support::{KillOnDrop, exit_within};

/// A running server; killed when dropped.
struct Server {
    child: KillOnDrop,
    base: String,
    stderr: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts `deputy serve` on a free port with `config` in a fresh
    /// directory, and `env` added to its environment.
    fn start(config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("deputy.toml"), config).unwrap();
        Self::start_in(dir, env)
    }

    /// Starts `deputy serve` in `dir`, whose `deputy.toml` is in place.
    fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_deputy"));
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .current_dir(dir.path())
            .env_remove("DEPUTY_CONFIG")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        // Guarded at once, so a server that fails to start is not left behind.
        let mut child = KillOnDrop(command.spawn().unwrap());
        let stderr = Arc::new(Mutex::new(String::new()));
        let (address_sender, address) = std::sync::mpsc::channel();
        let reader = BufReader::new(child.0.stderr.take().unwrap());
        let log = stderr.clone();
        // Keeps reading, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("deputy serve: listening on ") {
                    let _ = address_sender.send(address.to_owned());
                }
                log.lock().unwrap().push_str(&line);
                log.lock().unwrap().push('\n');
            }
        });
        let base = address
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the server did not start: {}", stderr.lock().unwrap()));
        Self {
            child,
            base,
            stderr,
            dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("deputy.toml")
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for the exit code.
    fn terminate(&mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        match exit_within(&mut self.child.0, Duration::from_secs(30)) {
            Some(status) => status.code(),
            None => panic!("the server did not stop: {}", self.log()),
        }
    }
}

fn config(latency_ms: u64, subagents: &str, extra: &str) -> String {
    format!(
        r#"
[agent.subagents]
{subagents}

[providers.offline]
kind = "scripted"
latency_ms = {latency_ms}

[agents.orchestrator]
provider = "offline"
subagents = ["researcher"]

[agents.researcher]
provider = "offline"

[hooks.metrics]
{extra}"#
    )
}

async fn post(client: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let response = client.post(url).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Starts `count` tasks through the API; returns their ids.
async fn start_tasks(client: &reqwest::Client, server: &Server, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..count {
        let (status, created) = post(
            client,
            &server.url("/v1/tasks"),
            json!({"task": format!("task {n}")}),
        )
        .await;
        assert_eq!(status, 202, "{created}");
        ids.push(created["task_id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Polls `/v1/settings` (for up to 10 s) until `done` holds; returns the
/// last answer either way, for the caller's assertions.
async fn settings_until(
    client: &reqwest::Client,
    server: &Server,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let mut settings = Value::Null;
    for _ in 0..400 {
        settings = get(client, &server.url("/v1/settings")).await.1;
        if done(&settings) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    settings
}

/// Waits until the server reports a failed reload, checks its error says
/// `why`, and returns the settings it reported.
async fn reload_failure(client: &reqwest::Client, server: &Server, why: &str) -> Value {
    let settings =
        settings_until(client, server, |settings| settings["reload"]["ok"] == false).await;
    assert_eq!(settings["reload"]["ok"], false, "{settings}");
    assert!(
        settings["reload"]["error"]
            .as_str()
            .is_some_and(|error| error.contains(why)),
        "the reload error should say {why:?}: {settings}"
    );
    settings
}

/// Waits (up to 5 s) until the server's log holds `line`: it arrives
/// through a pipe and a reader thread.
async fn log_until(server: &Server, line: &str) {
    for _ in 0..200 {
        if server.log().contains(line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no {line:?} in the log:\n{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_spawned_listed_waited_for_and_cancelled() {
    let server = Server::start(&config(200, "max_concurrent = 4", ""), &[]);
    let client = reqwest::Client::new();

    let (status, created) = post(
        &client,
        &server.url("/v1/tasks"),
        json!({"agent": "researcher", "task": "Summarise Go", "context": "one paragraph"}),
    )
    .await;
    assert_eq!(status, 202, "{created}");
    assert_eq!(created["agent"], "researcher");
    let id = created["task_id"].as_str().unwrap().to_owned();

    let (status, listed) = get(&client, &server.url("/v1/tasks")).await;
    assert_eq!(status, 200);
    assert!(
        listed["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|task| task["task_id"] == id.as_str())
    );

    let (status, done) = get(
        &client,
        &server.url(&format!("/v1/tasks/{id}?wait=true&timeout_ms=10000")),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "completed");
    assert!(
        done["result"].as_str().unwrap().contains("Summarise Go"),
        "{done}"
    );
    assert!(done["usage"]["requests"].as_u64().unwrap() >= 1);

    let (_, completed) = get(&client, &server.url("/v1/tasks?status=completed")).await;
    assert_eq!(completed["tasks"].as_array().unwrap().len(), 1);

    // "auto" picks a worker, never the orchestrator.
    let (status, auto) = post(
        &client,
        &server.url("/v1/tasks"),
        json!({"task": "Summarise Rust"}),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(auto["agent"], "researcher");
    let running = auto["task_id"].as_str().unwrap().to_owned();
    let response = client
        .delete(server.url(&format!("/v1/tasks/{running}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"task_id": running, "status": "cancelled"}));

    // Cancelling what already ended is a conflict that says how it ended.
    let response = client
        .delete(server.url(&format!("/v1/tasks/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "completed");

    let (status, body) = get(&client, &server.url("/v1/tasks/not-an-id")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is not a task id")
    );
    let (status, body) = get(
        &client,
        &server.url("/v1/tasks/0b7e5f8e-2d9a-4d77-9a39-8f0c8b1e2a11"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_task"))
    );
    let (status, body) = post(
        &client,
        &server.url("/v1/tasks"),
        json!({"agent": "writer", "task": "x"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_agent"))
    );

    // The selector's reading of a name: any case of "auto", or a blank
    // one, picks; a named agent may be padded.
    for agent in ["AUTO", " Auto ", "", "  ", " researcher "] {
        let (status, body) = post(
            &client,
            &server.url("/v1/tasks"),
            json!({"agent": agent, "task": "Summarise Zig"}),
        )
        .await;
        assert_eq!(status, 202, "{agent:?}: {body}");
        assert_eq!(body["agent"], "researcher", "{agent:?}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_registry_answers_429_and_bad_bodies_400_or_413() {
    let server = Server::start(
        &config(
            5000,
            "max_concurrent = 1\nqueue_wait_ms = 0",
            "\n[server]\nmax_body_bytes = 1024\n",
        ),
        &[],
    );
    let client = reqwest::Client::new();
    let (status, _) = post(&client, &server.url("/v1/tasks"), json!({"task": "first"})).await;
    assert_eq!(status, 202);
    let (status, body) = post(&client, &server.url("/v1/tasks"), json!({"task": "second"})).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "capacity");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum concurrent sub-agents (1) reached")
    );

    let response = client
        .post(server.url("/v1/tasks"))
        .header("content-type", "application/json")
        .body("{\"task\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON body"),
        "{body}"
    );

    let (status, body) = post(
        &client,
        &server.url("/v1/tasks"),
        json!({"task": "x", "colour": "red"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `colour`"),
        "{body}"
    );

    let (status, body) = post(
        &client,
        &server.url("/v1/tasks"),
        json!({"task": "x".repeat(4096)}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
}

/// Runs going on at once are capped (64); one more is refused with 429
/// until a run ends (here, cancelled), which gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_past_the_cap_are_refused_until_one_ends() {
    let server = Server::start(
        r#"
[providers.slow]
kind = "scripted"
latency_ms = 60000

[[providers.slow.turns]]
text = "Done."

[agents.orchestrator]
provider = "slow"
"#,
        &[],
    );
    let client = reqwest::Client::new();
    let mut first = None;
    for n in 0..64 {
        let (status, created) = post(
            &client,
            &server.url("/v1/runs"),
            json!({"prompt": format!("run {n}")}),
        )
        .await;
        assert_eq!(status, 202, "run {n}: {created}");
        first.get_or_insert(created["run_id"].as_str().unwrap().to_owned());
    }
    let (status, refused) = post(
        &client,
        &server.url("/v1/runs"),
        json!({"prompt": "one more"}),
    )
    .await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["error"]["code"], "capacity");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("64 runs are going on"),
        "{refused}"
    );

    let first = first.unwrap();
    let response = client
        .delete(server.url(&format!("/v1/tasks/{first}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let (status, run) = get(
        &client,
        &server.url(&format!("/v1/runs/{first}?wait=true&timeout_ms=20000")),
    )
    .await;
    assert_eq!(
        (status, &run["status"]),
        (200, &json!("cancelled")),
        "{run}"
    );
    // The ending is recorded before the place is given back: wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, created) =
            post(&client, &server.url("/v1/runs"), json!({"prompt": "now"})).await;
        if status == 202 {
            break;
        }
        assert_eq!(status, 429, "{created}");
        assert!(std::time::Instant::now() < deadline, "no place came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_route_but_healthz() {
    let server = Server::start(
        &config(10, "", "\n[server]\ntoken_env = \"DEPUTY_TEST_TOKEN\"\n"),
        &[("DEPUTY_TEST_TOKEN", "s3cret-token")],
    );
    let client = reqwest::Client::new();
    let response = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    for route in ["/v1/tasks", "/v1/settings", "/metrics"] {
        let response = client.get(server.url(route)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{route}");
        let response = client
            .get(server.url(route))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401, "{route}");
        let response = client
            .get(server.url(route))
            .bearer_auth("s3cret-token")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{route}");
    }
    assert!(!server.log().contains("s3cret-token"));
}

#[test]
fn it_refuses_a_public_address_without_a_token_and_an_unset_token() {
    let dir = tempfile::tempdir().unwrap();
    // Starts `deputy serve` on `config`, expects it to exit with the usage
    // code 2, and returns what it printed to stderr.
    // A server that does start is killed, not left listening on every
    // interface.
    let refused = |config: String, listen: &str| {
        std::fs::write(dir.path().join("deputy.toml"), config).unwrap();
        let mut child = KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_deputy"))
                .args(["serve", "--listen", listen])
                .current_dir(dir.path())
                .env_remove("DEPUTY_CONFIG")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let status = exit_within(&mut child.0, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("deputy serve --listen {listen} did not refuse"));
        assert_eq!(status.code(), Some(2), "{listen}");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
        stderr
    };

    let stderr = refused(config(10, "", ""), "0.0.0.0:0");
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without a token"),
        "{stderr}"
    );

    let unset_token = "\n[server]\ntoken_env = \"DEPUTY_TEST_UNSET_TOKEN\"\n";
    let stderr = refused(config(10, "", unset_token), "127.0.0.1:0");
    assert!(
        stderr.contains("DEPUTY_TEST_UNSET_TOKEN, which is unset or empty"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_metrics_and_events_are_served() {
    let server = Server::start(&config(50, "", ""), &[]);
    let client = reqwest::Client::new();

    let mut events = client.get(server.url("/v1/events")).send().await.unwrap();
    assert_eq!(events.status().as_u16(), 200);

    let (status, created) = post(
        &client,
        &server.url("/v1/runs"),
        json!({"prompt": "Compare Go and Rust"}),
    )
    .await;
    assert_eq!(status, 202, "{created}");
    let run_id = created["run_id"].as_str().unwrap().to_owned();
    let (status, run) = get(
        &client,
        &server.url(&format!("/v1/runs/{run_id}?wait=true&timeout_ms=20000")),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(run["status"], "completed", "{run}");
    assert!(
        run["answer"]
            .as_str()
            .unwrap()
            .contains("from 2 sub-agent results")
    );
    assert_eq!(run["tasks"].as_array().unwrap().len(), 2);

    let mut seen = String::new();
    while !seen.contains("event: finished") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), events.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: started"), "{seen}");
    assert!(seen.contains("\"type\":\"finished\""), "{seen}");

    let response = client.get(server.url("/metrics")).send().await.unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    assert!(
        text.contains(
            "deputy_subagents_finished_total{agent=\"researcher\",status=\"completed\"} 2"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_run_lists_its_tasks_as_a_finished_one_does() {
    // Slow enough that the run is surely seen running with its sub-agents.
    let server = Server::start(&config(3000, "", ""), &[]);
    let client = reqwest::Client::new();
    let (status, created) = post(
        &client,
        &server.url("/v1/runs"),
        json!({"prompt": "Compare Go and Rust"}),
    )
    .await;
    assert_eq!(status, 202, "{created}");
    let run_id = created["run_id"].as_str().unwrap().to_owned();
    let run_url = server.url(&format!("/v1/runs/{run_id}"));

    let mut running = Value::Null;
    for _ in 0..400 {
        running = get(&client, &run_url).await.1;
        if running["status"] != "running" || running["tasks"].as_array().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(running["status"], "running", "{running}");
    let tasks = running["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2, "{running}");
    for task in tasks {
        assert_eq!(task["parent_id"], run_id.as_str(), "{task}");
        assert_eq!(task["agent"], "researcher", "{task}");
        assert_eq!(task["depth"], 1, "{task}");
        assert!(task["id"].is_string(), "{task}");
        assert!(task["elapsed_ms"].is_u64(), "{task}");
        assert!(task.get("task_id").is_none(), "{task}");
    }

    let (status, done) = get(
        &client,
        &server.url(&format!("/v1/runs/{run_id}?wait=true&timeout_ms=60000")),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(done["status"], "completed", "{done}");
    let finished = done["tasks"].as_array().unwrap();
    let keys = |task: &Value| {
        let mut keys: Vec<String> = task.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let ids = |tasks: &[Value]| {
        tasks
            .iter()
            .map(|task| task["id"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(tasks), ids(finished), "{running}\n{done}");
    for (before, after) in tasks.iter().zip(finished) {
        assert_eq!(keys(before), keys(after), "{before}\n{after}");
        assert_eq!(after["status"], "completed", "{after}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_file_raises_the_cap_for_queued_tasks_and_a_bad_edit_is_reported() {
    let server = Server::start(
        &config(3000, "max_concurrent = 1\nqueue_wait_ms = 600000", ""),
        &[],
    );
    let client = reqwest::Client::new();
    start_tasks(&client, &server, 3).await;
    let (_, settings) = get(&client, &server.url("/v1/settings")).await;
    assert_eq!(
        (settings["running"].as_u64(), settings["queued"].as_u64()),
        (Some(1), Some(2)),
        "{settings}"
    );

    let text = std::fs::read_to_string(server.config_path())
        .unwrap()
        .replace("max_concurrent = 1", "max_concurrent = 3");
    std::fs::write(server.config_path(), text).unwrap();
    let settings = settings_until(&client, &server, |settings| settings["running"] == 3).await;
    assert_eq!(settings["running"], 3, "{settings}");
    assert_eq!(settings["subagents"]["max_concurrent"], 3);
    assert_eq!(settings["reload"]["ok"], true);
    assert!(
        settings["reload"]["reloads"].as_u64().unwrap() >= 1,
        "{settings}"
    );
    log_until(
        &server,
        "config reloaded: [agent.subagents] max_concurrent 1 -> 3",
    )
    .await;

    std::fs::write(
        server.config_path(),
        "[agent.subagents]\nmax_concurrent = -1\n",
    )
    .unwrap();
    let settings = reload_failure(&client, &server, "keeping the last good settings").await;
    assert_eq!(settings["subagents"]["max_concurrent"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_forces_a_reload() {
    let server = Server::start(&config(10, "", ""), &[]);
    let client = reqwest::Client::new();
    let (_, settings) = get(&client, &server.url("/v1/settings")).await;
    assert_eq!(settings["reload"]["reloads"], 0, "{settings}");
    let status = Command::new("kill")
        .args(["-HUP", &server.child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let settings = settings_until(&client, &server, |settings| {
        settings["reload"]["reloads"] == 1
    })
    .await;
    assert_eq!(settings["reload"]["reloads"], 1, "{settings}");
    assert_eq!(settings["reload"]["ok"], true);
    log_until(&server, "SIGHUP: reloading the config").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_every_start_has_its_stop_in_the_audit_log() {
    let mut server = Server::start(
        &config(
            300,
            "max_concurrent = 2\nqueue_wait_ms = 600000",
            "\n[hooks.audit]\npath = \"audit.jsonl\"\n\n[server]\ndrain_secs = 30\n",
        ),
        &[],
    );
    let client = reqwest::Client::new();
    start_tasks(&client, &server, 4).await;
    assert_eq!(server.terminate(), Some(0), "{}", server.log());
    assert!(
        server
            .log()
            .contains("deputy serve: stopped (every task finished)"),
        "{}",
        server.log()
    );
    assert_audit_pairs(&server.dir.path().join("audit.jsonl"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_drain_limit_cancels_and_still_fires_every_stop() {
    let mut server = Server::start(
        &config(
            60_000,
            "max_concurrent = 2\nqueue_wait_ms = 600000",
            "\n[hooks.audit]\npath = \"audit.jsonl\"\n\n[server]\ndrain_secs = 0\n",
        ),
        // The API logs when a wait begins, at debug.
        &[("RUST_LOG", "info,deputy::api=debug")],
    );
    let client = reqwest::Client::new();
    let ids = start_tasks(&client, &server, 2).await;
    // An open event stream and a long wait must not hold the shutdown.
    let events = client.get(server.url("/v1/events")).send().await.unwrap();
    assert_eq!(events.status().as_u16(), 200);
    let waiting = tokio::spawn(
        client
            .get(server.url(&format!("/v1/tasks/{}?wait=true", ids[0])))
            .send(),
    );
    // The wait is in its handler before the signal, so it is the stop,
    // not a closed connection, that must end it.
    log_until(&server, "waiting for the task to finish").await;
    assert_eq!(server.terminate(), Some(0), "{}", server.log());
    drop(events);
    // The wait answered with the task's state (still running, or already
    // cancelled by the drain limit, as the two race), rather than having
    // its connection closed under it.
    let waited = waiting.await.unwrap().unwrap();
    assert_eq!(waited.status().as_u16(), 200, "{}", server.log());
    let task: Value = waited.json().await.unwrap();
    assert_eq!(task["task_id"], ids[0].as_str(), "{task}");
    assert!(
        matches!(task["status"].as_str(), Some("running" | "cancelled")),
        "{task}"
    );
    assert!(
        !server.log().contains("connections still open"),
        "the stop did not end the stream and the wait:\n{}",
        server.log()
    );
    assert!(
        server
            .log()
            .contains("2 tasks cancelled at the drain limit"),
        "{}",
        server.log()
    );
    let stops = assert_audit_pairs(&server.dir.path().join("audit.jsonl"), 2);
    assert!(
        stops.iter().all(|status| status == "cancelled"),
        "{stops:?}"
    );
}

/// Checks one start and one stop per task; returns the stop statuses.
fn assert_audit_pairs(path: &Path, tasks: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let mut starts = std::collections::HashMap::<String, usize>::new();
    let mut stops = std::collections::HashMap::<String, usize>::new();
    let mut statuses = Vec::new();
    for line in &lines {
        let id = line["task_id"].as_str().unwrap().to_owned();
        if line["hook_event_name"] == "SubagentStart" {
            *starts.entry(id).or_default() += 1;
        } else {
            *stops.entry(id).or_default() += 1;
            statuses.push(line["status"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(starts.len(), tasks, "{text}");
    assert_eq!(starts, stops, "{text}");
    assert!(starts.values().all(|count| *count == 1), "{text}");
    statuses
}

/// Polls `/v1/settings` until `max_concurrent` is `cap`.
async fn wait_for_cap(client: &reqwest::Client, server: &Server, cap: u64) -> Value {
    let settings = settings_until(client, server, |settings| {
        settings["subagents"]["max_concurrent"] == cap
    })
    .await;
    assert_eq!(
        settings["subagents"]["max_concurrent"],
        cap,
        "{settings}\n{}",
        server.log()
    );
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_save_and_a_delete_and_recreate_apply_through_the_server() {
    let server = Server::start(&config(10, "max_concurrent = 1", ""), &[]);
    let client = reqwest::Client::new();
    let original = std::fs::read_to_string(server.config_path()).unwrap();

    // vim: write a new file beside it, rename it over the old one.
    let swap = server.dir.path().join(".deputy.toml.swp");
    std::fs::write(
        &swap,
        original.replace("max_concurrent = 1", "max_concurrent = 4"),
    )
    .unwrap();
    std::fs::rename(&swap, server.config_path()).unwrap();
    wait_for_cap(&client, &server, 4).await;

    // Delete, then write it again.
    std::fs::remove_file(server.config_path()).unwrap();
    let settings = reload_failure(&client, &server, "cannot read").await;
    assert_eq!(
        settings["subagents"]["max_concurrent"], 4,
        "the last good settings stay: {settings}"
    );
    std::fs::write(
        server.config_path(),
        original.replace("max_concurrent = 1", "max_concurrent = 6"),
    )
    .unwrap();
    let settings = wait_for_cap(&client, &server, 6).await;
    assert_eq!(settings["reload"]["ok"], true, "{settings}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_symlink_swap_applies_through_the_server() {
    use std::os::unix::fs::symlink;
    // The layout of a Kubernetes ConfigMap volume, built before the server
    // starts: deputy.toml -> ..data/deputy.toml, ..data -> ..v1.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("..v1")).unwrap();
    std::fs::write(
        root.join("..v1/deputy.toml"),
        config(10, "max_concurrent = 1", ""),
    )
    .unwrap();
    symlink("..v1", root.join("..data")).unwrap();
    symlink("..data/deputy.toml", root.join("deputy.toml")).unwrap();
    let server = Server::start_in(dir, &[]);
    let client = reqwest::Client::new();
    let (_, settings) = get(&client, &server.url("/v1/settings")).await;
    assert_eq!(settings["subagents"]["max_concurrent"], 1);

    let root = server.dir.path();
    std::fs::create_dir(root.join("..v2")).unwrap();
    std::fs::write(
        root.join("..v2/deputy.toml"),
        config(10, "max_concurrent = 5", ""),
    )
    .unwrap();
    symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..v1")).unwrap();
    wait_for_cap(&client, &server, 5).await;
}
