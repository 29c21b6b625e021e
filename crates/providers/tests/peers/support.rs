//! Starting and stopping the mock servers, building providers against
//! them, and reading llmock's verdict.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use deputy_providers::{
    ChatRequest, ChatResponse, ChatStream, FinishReason, Message, Provider, ProviderConfig,
    ProviderError, RawProviderConfig, StreamEvent, ToolArguments, ToolCall, ToolSpec,
};
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::time::Instant;

/// The variable that names the directory the peers are installed in.
pub(crate) const PEERS_ENV: &str = "DEPUTY_TEST_PEERS";

/// How long a server may take to answer `/health` (generous: on a busy
/// two-core CI machine Python takes a while to import its web stack).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The variable the providers read their (dummy) key from.
const KEY_ENV: &str = "DEPUTY_PEERS_TEST_KEY";

/// The directory `scripts/install-test-peers.sh` installed into.
pub(crate) fn peers_dir() -> PathBuf {
    match std::env::var_os(PEERS_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join("target/test-peers"),
    }
}

/// The workspace root: two levels above this crate.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .to_path_buf()
}

/// The executable at `relative` under the peers directory, or a failure
/// that says how to install it.
fn peer_binary(relative: &str, what: &str) -> PathBuf {
    let dir = peers_dir();
    let path = dir.join(relative);
    assert!(
        path.is_file(),
        "{what} is not installed: {} does not exist (peers directory {}, from {}). \
         Install the test peers with `bash scripts/install-test-peers.sh` from the repository \
         root, or set {PEERS_ENV} to the directory it installed into.",
        path.display(),
        dir.display(),
        if std::env::var_os(PEERS_ENV).is_some_and(|dir| !dir.is_empty()) {
            PEERS_ENV
        } else {
            "the default <workspace>/target/test-peers"
        },
    );
    path
}

/// Runs the server (`"$@"`) in the background and kills it as soon as
/// stdin reaches its end: when the guard drops our end of the pipe, or
/// when the test process dies without running destructors (a harness
/// timeout), so no server outlives its test. Exits with the server.
const WATCHDOG: &str = r#""$@" &
server=$!
exec 3<&0
( read -r _ <&3; kill -KILL "$server" 2>/dev/null ) &
watcher=$!
wait "$server" 2>/dev/null
status=$?
kill "$watcher" 2>/dev/null
exit "$status"
"#;

/// A running mock server. Dropping it (also while a test panics) stops
/// the server; a panicking test also prints where the server's log is.
#[derive(Debug)]
pub(crate) struct Peer {
    name: &'static str,
    port: u16,
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
    client: reqwest::Client,
}

impl Peer {
    /// Starts `program` with the arguments `args(port)` on a free port and
    /// waits until `GET /health` answers 200.
    async fn start(
        name: &'static str,
        program: &Path,
        args: impl Fn(u16) -> Vec<OsString>,
    ) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        const ATTEMPTS: u32 = 3;
        for attempt in 1..=ATTEMPTS {
            let port = free_port();
            let log = log_path(name);
            let mut peer = Self::spawn(name, program, &args(port), port, log, client.clone());
            match peer.wait_ready().await {
                Ok(()) => return peer,
                // Someone else took the port between our probe and the
                // server's bind: try another one.
                Err(Exit::Exited(status)) if attempt < ATTEMPTS => {
                    eprintln!(
                        "{name} exited ({status}) on port {port}; retrying on another port. Its log:\n{}",
                        peer.log_text()
                    );
                }
                Err(exit) => {
                    let why = match exit {
                        Exit::Exited(status) => format!("it exited ({status})"),
                        Exit::NotReady => format!(
                            "http://127.0.0.1:{port}/health did not answer 200 within {} s",
                            READY_TIMEOUT.as_secs()
                        ),
                    };
                    panic!(
                        "cannot start the test peer {name} ({} {}): {why}. \
                         Re-run `bash scripts/install-test-peers.sh` if the install is broken. \
                         Its log ({}):\n{}",
                        program.display(),
                        args(port)
                            .iter()
                            .map(|arg| arg.to_string_lossy().into_owned())
                            .collect::<Vec<_>>()
                            .join(" "),
                        peer.log.display(),
                        peer.log_text()
                    );
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn(
        name: &'static str,
        program: &Path,
        args: &[OsString],
        port: u16,
        log: PathBuf,
        client: reqwest::Client,
    ) -> Self {
        let out = File::create(&log)
            .unwrap_or_else(|error| panic!("cannot create the log {}: {error}", log.display()));
        let err = out.try_clone().unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {name} ({}): {error}", program.display()));
        let stdin = child.stdin.take();
        Self {
            name,
            port,
            child,
            stdin,
            log,
            client,
        }
    }

    async fn wait_ready(&mut self) -> Result<(), Exit> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let health = format!("{}/health", self.url());
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(Exit::Exited(status));
            }
            let probe = self
                .client
                .get(&health)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if probe.is_ok_and(|response| response.status().is_success()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Exit::NotReady);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `GET url` on the server, as JSON.
    pub(crate) async fn get_json(&self, path: &str) -> Value {
        let response = self
            .client
            .get(format!("{}{path}", self.url()))
            .send()
            .await
            .unwrap_or_else(|error| panic!("GET {path} on {}: {error}", self.name));
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(
            status.is_success(),
            "GET {path} on {}: {status} {body}",
            self.name
        );
        serde_json::from_str(&body).unwrap_or_else(|error| panic!("GET {path}: {error}: {body}"))
    }

    /// `POST url` on the server with a JSON body, as JSON.
    pub(crate) async fn post_json(&self, path: &str, body: &Value) -> Value {
        let response = self
            .client
            .post(format!("{}{path}", self.url()))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|error| panic!("POST {path} on {}: {error}", self.name));
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(
            status.is_success(),
            "POST {path} {body} on {}: {status} {text}",
            self.name
        );
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("POST {path}: {error}: {text}"))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Closing stdin makes the watchdog kill the server and exit.
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if std::thread::panicking() {
            eprintln!(
                "test peer {} on port {} stopped; its log is {}:\n{}",
                self.name,
                self.port,
                self.log.display(),
                self.log_text()
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

enum Exit {
    Exited(ExitStatus),
    NotReady,
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A new file for one server's output, under Cargo's temp dir for tests.
fn log_path(name: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    scratch_file(&format!(
        "{name}-{}-{}.log",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

fn scratch_file(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("peers");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// llmock 0.2.2 (Python), answering `Mock response from <model>.` to
/// every prompt (`--response-style static`).
#[derive(Debug)]
pub(crate) struct Llmock {
    peer: Peer,
}

impl Llmock {
    pub(crate) async fn start() -> Self {
        let program = peer_binary("venv/bin/llmock", "llmock (the Python mock server)");
        let peer = Peer::start("llmock", &program, |port| {
            [
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--response-style",
                "static",
                "--log-level",
                "warning",
            ]
            .map(OsString::from)
            .to_vec()
        })
        .await;
        Self { peer }
    }

    /// A provider of `kind` (`openai`, `anthropic` or `gemini`) on this
    /// server, with quick retries; `tune` adjusts its config.
    pub(crate) fn provider(
        &self,
        kind: &str,
        tune: impl FnOnce(&mut RawProviderConfig),
    ) -> Arc<dyn Provider> {
        let url = self.peer.url();
        let (base_url, model) = match kind {
            "openai" => (format!("{url}/v1"), "gpt-4o-mini"),
            "anthropic" => (format!("{url}/anthropic/v1"), "claude-3-5-haiku-latest"),
            "gemini" => (format!("{url}/gemini/v1beta"), "gemini-2.0-flash"),
            other => panic!("llmock does not serve kind {other}"),
        };
        provider(kind, base_url, model, tune)
    }

    /// Queues scripted behaviours (`POST /_llmock/scenario`).
    pub(crate) async fn scenario(&self, behaviors: Value) {
        let answer = self
            .peer
            .post_json("/_llmock/scenario", &json!({ "behaviors": behaviors }))
            .await;
        assert!(
            answer.get("queued").is_some(),
            "scenario not queued: {answer}"
        );
    }

    /// Behaviours still queued.
    pub(crate) async fn pending(&self) -> Vec<Value> {
        let answer = self.peer.get_json("/_llmock/scenario").await;
        answer["pending"].as_array().cloned().unwrap_or_default()
    }

    /// llmock's verdict on how the client handled the faults it injected.
    pub(crate) async fn verdict(&self) -> Verdict {
        Verdict(self.peer.get_json("/_llmock/verdict").await)
    }

    /// The requests llmock saw, oldest first.
    pub(crate) async fn requests(&self) -> Vec<Value> {
        let answer = self.peer.get_json("/_llmock/requests").await;
        answer["requests"].as_array().cloned().unwrap_or_default()
    }
}

/// llmock's `GET /_llmock/verdict`.
#[derive(Debug, Clone)]
pub(crate) struct Verdict(pub(crate) Value);

impl Verdict {
    /// The codes of its findings (`retry_after_ignored`, `gave_up`, ...).
    pub(crate) fn codes(&self) -> Vec<String> {
        self.0["findings"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|finding| finding["code"].as_str().map(str::to_owned))
            .collect()
    }

    /// Asserts that llmock found no error: every injected fault was
    /// handled (no ignored Retry-After, no retried 4xx, no retry storm, no
    /// truncated stream taken as an answer).
    pub(crate) fn assert_passed(&self) {
        assert_eq!(
            self.0["passed"],
            json!(true),
            "llmock verdict: {:#}",
            self.0
        );
        assert_eq!(self.0["errors"], json!(0), "llmock verdict: {:#}", self.0);
        for code in [
            "retry_after_ignored",
            "retried_non_retryable",
            "retry_storm",
            "truncated_stream_accepted",
        ] {
            assert!(
                !self.codes().iter().any(|found| found == code),
                "llmock found {code}: {:#}",
                self.0
            );
        }
    }

    /// Asserts a verdict with no findings at all, warnings included.
    pub(crate) fn assert_clean(&self) {
        self.assert_passed();
        assert!(self.codes().is_empty(), "llmock verdict: {:#}", self.0);
    }

    /// Asserts how many logical calls and how many requests llmock saw.
    pub(crate) fn assert_calls(&self, calls: u64, attempts: u64) {
        assert_eq!(
            (&self.0["calls"], &self.0["attempts"]),
            (&json!(calls), &json!(attempts)),
            "llmock verdict (calls, attempts): {:#}",
            self.0
        );
    }
}

/// aimock 1.43.0 (npm, the `llmock` bin of @copilotkit/aimock), answering
/// from `fixtures`.
#[derive(Debug)]
pub(crate) struct Aimock {
    peer: Peer,
    fixtures: PathBuf,
}

impl Aimock {
    pub(crate) async fn start(fixtures: &Value) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let program = peer_binary(
            "npm/node_modules/.bin/llmock",
            "aimock (the llmock bin of @copilotkit/aimock)",
        );
        let path = scratch_file(&format!(
            "aimock-fixtures-{}-{}.json",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, serde_json::to_vec_pretty(fixtures).unwrap()).unwrap();
        let peer = Peer::start("aimock", &program, |port| {
            vec![
                "-p".into(),
                port.to_string().into(),
                "-h".into(),
                "127.0.0.1".into(),
                "-f".into(),
                path.clone().into_os_string(),
            ]
        })
        .await;
        Self {
            peer,
            fixtures: path,
        }
    }

    /// A provider of `kind` (`openai` or `ollama`) on this server.
    pub(crate) fn provider(
        &self,
        kind: &str,
        tune: impl FnOnce(&mut RawProviderConfig),
    ) -> Arc<dyn Provider> {
        let url = self.peer.url();
        let (base_url, model) = match kind {
            "openai" => (format!("{url}/v1"), "gpt-4o-mini"),
            "ollama" => (url, "llama3.2"),
            other => panic!("these tests use aimock only for openai and ollama, not {other}"),
        };
        provider(kind, base_url, model, tune)
    }

    /// The requests aimock saw (`GET /__aimock/journal`).
    pub(crate) async fn journal(&self) -> Value {
        self.peer.get_json("/__aimock/journal").await
    }
}

impl Drop for Aimock {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.fixtures);
        }
    }
}

/// A provider built the way deployments build them: a raw
/// `[providers.<name>]` table, checked, then built with the key read from
/// the environment (here a closure). Retries are quick (50 ms first
/// backoff) but server-requested waits are honoured.
pub(crate) fn provider(
    kind: &str,
    base_url: String,
    model: &str,
    tune: impl FnOnce(&mut RawProviderConfig),
) -> Arc<dyn Provider> {
    let mut raw = RawProviderConfig {
        kind: Some(kind.to_owned()),
        base_url: Some(base_url),
        api_key_env: Some(KEY_ENV.to_owned()),
        model: Some(model.to_owned()),
        connect_timeout_ms: Some(2_000),
        idle_timeout_ms: Some(10_000),
        request_timeout_ms: Some(30_000),
        max_retries: Some(3),
        initial_backoff_ms: Some(50),
        max_backoff_ms: Some(400),
        max_retry_wait_ms: Some(5_000),
        ..RawProviderConfig::default()
    };
    tune(&mut raw);
    let name = format!("peer-{kind}");
    ProviderConfig::from_raw(&name, raw)
        .unwrap_or_else(|error| panic!("{error}"))
        .build(|variable| (variable == KEY_ENV).then(|| "sk-test-not-a-real-key".to_owned()))
        .unwrap_or_else(|error| panic!("{error}"))
}

/// The tool every round trip offers.
pub(crate) fn weather_tool() -> ToolSpec {
    ToolSpec {
        name: "get_weather".to_owned(),
        description: "The current weather in a city.".to_owned(),
        parameters: json!({
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city's name."}},
            "required": ["city"],
        }),
    }
}

/// A request with one user message (unique per logical call: llmock
/// takes identical bodies sent after a failure for retries of one call).
pub(crate) fn ask(text: &str) -> ChatRequest {
    ChatRequest::new(vec![Message::user(text)])
}

/// Plain (`chat`) or streamed (`chat_stream`, then collected) calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Plain,
    Streamed,
}

impl Mode {
    pub(crate) const BOTH: [Self; 2] = [Self::Plain, Self::Streamed];

    /// One call in this mode.
    pub(crate) async fn call(
        self,
        provider: &dyn Provider,
        request: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        match self {
            Self::Plain => provider.chat(request).await,
            Self::Streamed => {
                provider
                    .chat_stream(request)
                    .await?
                    .collect_response(provider.name())
                    .await
            }
        }
    }
}

/// Everything a stream yields: its events, then the error it ended with
/// (if any). Stops at the first error.
pub(crate) async fn drain(mut stream: ChatStream) -> (Vec<StreamEvent>, Option<ProviderError>) {
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => events.push(event),
            Err(error) => return (events, Some(error)),
        }
    }
    (events, None)
}

/// The text of `events`.
pub(crate) fn text_of(events: &[StreamEvent]) -> String {
    events
        .iter()
        .filter_map(|event| match event {
            StreamEvent::TextDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// The one call of a tool-calling answer, checked to be `get_weather`
/// with a JSON object of arguments.
pub(crate) fn the_weather_call(answer: &ChatResponse) -> &ToolCall {
    assert_eq!(answer.finish, FinishReason::ToolCalls, "{answer:#?}");
    assert_eq!(answer.tool_calls.len(), 1, "{answer:#?}");
    let call = &answer.tool_calls[0];
    assert_eq!(call.name, "get_weather", "{answer:#?}");
    assert!(!call.id.is_empty(), "a call without an id: {answer:#?}");
    match &call.arguments {
        ToolArguments::Json(arguments) => {
            assert!(
                arguments.is_object(),
                "arguments not an object: {answer:#?}"
            );
            assert!(arguments["city"].is_string(), "no city: {answer:#?}");
        }
        ToolArguments::Malformed { raw, error } => {
            panic!("the arguments did not parse ({error}): {raw}")
        }
    }
    call
}

/// A whole tool round trip: the model asks for `get_weather`, gets
/// "21C, sunny" back, and answers in text. Returns both answers.
pub(crate) async fn tool_round_trip(
    provider: &dyn Provider,
    mode: Mode,
    question: &str,
) -> (ChatResponse, ChatResponse) {
    let mut request = ask(question).tools(vec![weather_tool()]);
    let first = mode
        .call(provider, &request)
        .await
        .unwrap_or_else(|error| panic!("{mode:?} first call: {error}"));
    let call = the_weather_call(&first).clone();
    assert_eq!(first.usage.requests, 1, "{first:#?}");
    request.messages.push(first.to_message());
    request
        .messages
        .push(Message::tool_result(&call, "21C, sunny", false));
    let second = mode
        .call(provider, &request)
        .await
        .unwrap_or_else(|error| panic!("{mode:?} follow-up call: {error}"));
    assert_eq!(second.finish, FinishReason::Stop, "{second:#?}");
    assert!(second.tool_calls.is_empty(), "{second:#?}");
    assert!(!second.text.is_empty(), "{second:#?}");
    assert_eq!(second.usage.requests, 1, "{second:#?}");
    (first, second)
}
