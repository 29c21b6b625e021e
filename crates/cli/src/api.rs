//! The HTTP API of `deputy serve`: routes, their JSON, and errors in one
//! shape, `{"error": {"code": "...", "message": "..."}}`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use deputy_agent::{RunError, Runtime, TaskOptions, TaskSummary};
use deputy_hooks::Metrics;
use deputy_registry::{
    CancelOutcome, RawSubagentSettings, Registry, SelectionRequest, SpawnError, TaskFilter, TaskId,
    TaskSnapshot, TaskStatus,
};
use futures::{Stream, StreamExt as _};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::reload::ReloadStatus;
use crate::run_cmd::Ended;

/// How many finished runs are remembered; the oldest go first.
const MAX_RUNS: usize = 1000;
/// How many runs may go on at once; more are refused with 429.
const MAX_RUNNING_RUNS: usize = 64;
/// The longest a `?wait=true` request may wait.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Runtime,
    orchestrator: String,
    metrics: Option<Arc<Metrics>>,
    reload: Option<watch::Receiver<ReloadStatus>>,
    token: Option<String>,
    runs: Mutex<Runs>,
    /// One permit per run going on; a run holds its permit until its
    /// ending is recorded.
    run_slots: Arc<Semaphore>,
    /// Cancelled when the server begins to stop: event streams end and
    /// waits return, so open connections do not hold the shutdown.
    stopping: CancellationToken,
}

#[derive(Default)]
struct Runs {
    by_id: HashMap<TaskId, RunEntry>,
    order: VecDeque<TaskId>,
}

struct RunEntry {
    agent: String,
    prompt: String,
    created_at: SystemTime,
    /// `None` while the run goes on.
    result: watch::Receiver<Option<Ended>>,
}

impl AppState {
    pub(crate) fn new(
        runtime: Runtime,
        orchestrator: String,
        metrics: Option<Arc<Metrics>>,
        reload: Option<watch::Receiver<ReloadStatus>>,
        token: Option<String>,
        stopping: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                runtime,
                orchestrator,
                metrics,
                reload,
                token,
                runs: Mutex::new(Runs::default()),
                run_slots: Arc::new(Semaphore::new(MAX_RUNNING_RUNS)),
                stopping,
            }),
        }
    }
}

/// Every route, behind the token check and the body limit.
pub(crate) fn router(state: AppState, max_body_bytes: usize) -> Router {
    let protected = Router::new()
        .route("/v1/tasks", get(list_tasks).post(create_task))
        .route("/v1/tasks/{id}", get(get_task).delete(cancel_task))
        .route("/v1/runs", axum::routing::post(create_run))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/settings", get(settings))
        .route("/v1/events", get(events))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(protected)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; see README for the API",
            )
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// An error in the API's one shape.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn unknown_task(id: TaskId) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_task",
            format!("no task {id}; GET /v1/tasks lists the tasks the server holds"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        // Every bad body is a 400 (axum says 422 for well-formed JSON of
        // the wrong shape), but a too-large one is a 413.
        let (status, code) = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
        } else {
            (StatusCode::BAD_REQUEST, "bad_request")
        };
        Self::new(
            status,
            code,
            format!("invalid JSON body: {}", rejection.body_text()),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request(format!("invalid query: {}", rejection.body_text()))
    }
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.inner.token else {
        return next.run(request).await;
    };
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()));
    if authorized {
        next.run(request).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the server's token as `Authorization: Bearer <token>`",
        )
        .into_response()
    }
}

/// Compares without stopping at the first difference, so response time
/// says nothing about how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A task as the API shows it; `full` adds its result or error.
fn task_json(task: &TaskSnapshot, full: bool) -> Value {
    let mut value = json!({
        "task_id": task.id,
        "agent": task.agent,
        "status": task.status,
        "task": task.task,
        "parent_id": task.parent_id,
        "created_at": rfc3339(task.created_at),
        "started_at": task.started_at.map(rfc3339),
        "ended_at": task.ended_at.map(rfc3339),
        "queued_ms": millis(task.queued_for),
        "duration_ms": task.run_time.map(millis),
        "usage": task.usage,
    });
    if full {
        value["result"] = json!(task.output);
        value["error"] = json!(task.failure);
    }
    value
}

fn parse_id(id: &str) -> Result<TaskId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("{id:?} is not a task id (a UUID)")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTask {
    agent: Option<String>,
    task: String,
    context: Option<String>,
    max_turns: Option<u32>,
}

async fn create_task(
    State(state): State<AppState>,
    body: Result<Json<CreateTask>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body?;
    if let Some(turns) = body.max_turns
        && !(1..=1000).contains(&turns)
    {
        return Err(ApiError::bad_request(format!(
            "max_turns must be between 1 and 1000, got {turns}"
        )));
    }
    let runtime = &state.inner.runtime;
    let request = SelectionRequest {
        agent: body.agent.as_deref(),
        task: &body.task,
        required_capabilities: &[],
    };
    // The selector's own reading of the name, so "AUTO" or " " pick too.
    let agent = match request.named() {
        Some(name) => name.to_owned(),
        None => {
            let agents = runtime.agents();
            let workers: Vec<_> = agents
                .iter()
                .filter(|agent| **agent.name() != *state.inner.orchestrator || agents.len() == 1)
                .map(|agent| agent.candidate())
                .collect();
            runtime
                .registry()
                .select_agent(&request, &workers)
                .map_err(|error| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no_agent",
                        error.to_string(),
                    )
                })?
                .agent
                .to_string()
        }
    };
    let options = TaskOptions {
        context: body.context,
        max_turns: body.max_turns,
    };
    match runtime.spawn_task(&agent, &body.task, options) {
        Ok(spawned) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"task_id": spawned.id, "agent": agent, "status": spawned.status})),
        )),
        Err(error) => Err(run_error(error)),
    }
}

fn run_error(error: RunError) -> ApiError {
    let message = error.to_string();
    match error {
        RunError::UnknownAgent { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_agent", message)
        }
        RunError::EmptyPrompt => ApiError::bad_request(message),
        RunError::Spawn(
            SpawnError::AtCapacity { .. }
            | SpawnError::AgentAtCapacity { .. }
            | SpawnError::QueueFull { .. },
        ) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "capacity", message),
        RunError::Spawn(SpawnError::Disabled) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "disabled", message)
        }
        RunError::Spawn(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
        _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "failed", message),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<TaskStatus>,
}

async fn list_tasks(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query?;
    let mut filter = TaskFilter::all();
    if let Some(status) = query.status {
        filter = filter.status(status);
    }
    let tasks: Vec<Value> = state
        .inner
        .runtime
        .registry()
        .list(&filter)
        .iter()
        .filter(|task| !task.root)
        .map(|task| task_json(task, false))
        .collect();
    Ok(Json(json!({ "tasks": tasks })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    #[serde(default)]
    wait: bool,
    timeout_ms: Option<u64>,
}

impl WaitQuery {
    fn limit(&self) -> Duration {
        self.timeout_ms
            .map_or(MAX_WAIT, Duration::from_millis)
            .min(MAX_WAIT)
    }
}

async fn get_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query?;
    let id = parse_id(&id)?;
    let registry = state.inner.runtime.registry();
    let waited = if query.wait {
        // Says when a long wait began; tests also read it to know the
        // request is in.
        tracing::debug!(task = %id, "waiting for the task to finish");
        tokio::select! {
            waited = registry.wait(id, Some(query.limit())) => {
                Some(waited.map_err(|_| ApiError::unknown_task(id))?.task)
            }
            () = state.inner.stopping.cancelled() => None,
        }
    } else {
        None
    };
    let task = match waited {
        Some(task) => task,
        None => registry.get(id).ok_or_else(|| ApiError::unknown_task(id))?,
    };
    Ok(Json(task_json(&task, true)))
}

async fn cancel_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Response> {
    let id = parse_id(&id).map_err(IntoResponse::into_response)?;
    match state.inner.runtime.registry().cancel(id) {
        Ok(CancelOutcome::Cancelled { .. }) => {
            Ok(Json(json!({"task_id": id, "status": TaskStatus::Cancelled})))
        }
        Ok(CancelOutcome::AlreadyFinished { status }) => Err((
            StatusCode::CONFLICT,
            Json(json!({
                "task_id": id,
                "status": status,
                "error": {"code": "already_finished", "message": format!("task {id} had already ended: {status}")},
            })),
        )
            .into_response()),
        Err(_) => Err(ApiError::unknown_task(id).into_response()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRun {
    prompt: String,
    agent: Option<String>,
}

async fn create_run(
    State(state): State<AppState>,
    body: Result<Json<CreateRun>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body?;
    let agent = body
        .agent
        .unwrap_or_else(|| state.inner.orchestrator.clone());
    let Ok(slot) = state.inner.run_slots.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "capacity",
            format!(
                "{MAX_RUNNING_RUNS} runs are going on, the most this server takes at once; wait for one to finish"
            ),
        ));
    };
    // One guard over the start and the insert, so a run is known here
    // before anyone can learn its id; `start` only spawns, it never waits.
    let mut runs = state.inner.runs.lock();
    let handle = state
        .inner
        .runtime
        .start(&agent, body.prompt.clone())
        .map_err(run_error)?;
    let run_id = handle.run_id();
    let (sender, result) = watch::channel(None);
    tokio::spawn(async move {
        // Every ending is sent, so no run stays "running" for ever; its
        // slot is given back once it is.
        let _ = sender.send(Some(Ended::from(handle.finish().await)));
        drop(slot);
    });
    runs.by_id.insert(
        run_id,
        RunEntry {
            agent,
            prompt: body.prompt,
            created_at: SystemTime::now(),
            result,
        },
    );
    runs.order.push_back(run_id);
    // Only finished runs are forgotten; running ones are bounded above.
    if runs.order.len() > MAX_RUNS + MAX_RUNNING_RUNS {
        let Runs { by_id, order } = &mut *runs;
        let excess = order.len() - MAX_RUNS;
        let finished: Vec<TaskId> = order
            .iter()
            .copied()
            .filter(|id| {
                by_id
                    .get(id)
                    .is_some_and(|run| run.result.borrow().is_some())
            })
            .take(excess)
            .collect();
        for id in finished {
            by_id.remove(&id);
        }
        order.retain(|id| by_id.contains_key(id));
    }
    drop(runs);
    Ok((StatusCode::ACCEPTED, Json(json!({ "run_id": run_id }))))
}

async fn get_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query?;
    let id = parse_id(&id)?;
    let (agent, prompt, created_at, mut result) = {
        let runs = state.inner.runs.lock();
        let entry = runs.by_id.get(&id).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_run",
                format!(
                    "no run {id}: never started here, or one of the oldest finished runs, which the server forgets past the newest {MAX_RUNS}; read a run's result soon after it ends"
                ),
            )
        })?;
        (
            entry.agent.clone(),
            entry.prompt.clone(),
            entry.created_at,
            entry.result.clone(),
        )
    };
    if query.wait {
        tracing::debug!(run = %id, "waiting for the run to finish");
        tokio::select! {
            _ = tokio::time::timeout(query.limit(), result.wait_for(Option::is_some)) => {}
            () = state.inner.stopping.cancelled() => {}
        }
    }
    let finished = result.borrow().clone();
    let mut value = json!({
        "run_id": id,
        "agent": agent,
        "prompt": prompt,
        "created_at": rfc3339(created_at),
    });
    match finished {
        Some(done) => {
            let report = done.report.as_ref();
            value["status"] = json!(done.status);
            value["answer"] = json!(done.answer);
            value["error"] = json!(done.error);
            value["usage"] = json!(report.map(|report| report.usage));
            value["duration_ms"] = json!(report.map(|report| millis(report.duration)));
            value["tasks"] = json!(report.map_or(&[][..], |report| &report.tasks));
        }
        None => {
            value["status"] = json!("running");
            value["tasks"] = json!(run_tasks(state.inner.runtime.registry(), id));
        }
    }
    Ok(Json(value))
}

/// Every sub-agent task of a running run, at any depth, in spawn order: the
/// tasks its report lists once it ends, in the same shape.
fn run_tasks(registry: &Registry, run_id: TaskId) -> Vec<TaskSummary> {
    // A parent is spawned before its children, so one pass in spawn order
    // finds every descendant.
    let mut members = HashSet::from([run_id]);
    let mut tasks = Vec::new();
    for task in registry.list(&TaskFilter::all()) {
        if task
            .parent_id
            .is_some_and(|parent| members.contains(&parent))
        {
            members.insert(task.id);
            tasks.push(TaskSummary::from(&task));
        }
    }
    tasks
}

async fn settings(State(state): State<AppState>) -> Json<Value> {
    let registry = state.inner.runtime.registry();
    let stats = registry.stats();
    let live = RawSubagentSettings::from((*registry.settings()).clone());
    let reload = state
        .inner
        .reload
        .as_ref()
        .map(|status| status.borrow().clone());
    Json(json!({
        "subagents": live,
        "running": stats.running,
        "queued": stats.queued,
        "reload": reload,
    }))
}

async fn events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = state.inner.runtime.registry().subscribe();
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(event) => Event::default()
                .event(event_name(&event))
                .json_data(&event)
                .unwrap_or_else(|_| Event::default().event("error")),
            Err(broadcast::error::RecvError::Lagged(missed)) => Event::default()
                .event("lagged")
                .data(format!("{missed} events were missed; re-read /v1/tasks")),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), receiver))
    });
    let stopping = state.inner.stopping.clone().cancelled_owned();
    Sse::new(stream.take_until(stopping)).keep_alive(KeepAlive::default())
}

fn event_name(event: &deputy_registry::RegistryEvent) -> &'static str {
    use deputy_registry::RegistryEvent as E;
    match event {
        E::Queued { .. } => "queued",
        E::Started { .. } => "started",
        E::Finished { .. } => "finished",
        E::HookFailed { .. } => "hook_failed",
        E::SettingsApplied { .. } => "settings_applied",
        _ => "event",
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    match &state.inner.metrics {
        Some(metrics) => (
            [(header::CONTENT_TYPE, deputy_hooks::CONTENT_TYPE)],
            metrics.render(),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "metrics_off",
            "metrics are off; add a [hooks.metrics] section to the config",
        )
        .into_response(),
    }
}
