//! Command hooks: exit codes, replies, time limits, children, environment.
#![cfg(unix)]

use std::time::Duration;

use deputy_hooks::{CommandHook, SubagentStartHook as _, SubagentStopHook as _};
use deputy_registry::{HookStack, StartDecision, TaskStatus};

use crate::support::{
    Work, alive, eventually, hook_task, registry, run, script, start_event, stop_event, usage,
};

async fn start_with(body: &str) -> Result<StartDecision, String> {
    let dir = tempfile::tempdir().unwrap();
    let hook = CommandHook::new([script(dir.path(), "hook.sh", body)]).unwrap();
    hook.on_subagent_start(&start_event("researcher"))
        .await
        .map_err(|error| error.to_string())
}

#[tokio::test]
async fn exit_zero_without_output_allows() {
    assert_eq!(
        start_with("cat > /dev/null; exit 0").await.unwrap(),
        StartDecision::Allow
    );
}

#[tokio::test]
async fn exit_zero_with_json_is_applied() {
    assert_eq!(
        start_with(r#"echo '{"decision":"deny","reason":"team over quota"}'"#)
            .await
            .unwrap(),
        StartDecision::Deny {
            reason: "team over quota".into()
        }
    );
    assert_eq!(
        start_with(r#"echo '{"hookSpecificOutput":{"additionalContext":"use the EU index"}}'"#)
            .await
            .unwrap(),
        StartDecision::AddContext("use the EU index".into())
    );
}

#[tokio::test]
async fn exit_two_denies_with_stderr_as_the_reason() {
    assert_eq!(
        start_with("echo 'researchers are paused today' >&2; exit 2")
            .await
            .unwrap(),
        StartDecision::Deny {
            reason: "researchers are paused today".into()
        }
    );
}

#[tokio::test]
async fn exit_one_is_a_non_blocking_error_with_stderr() {
    let error = start_with("echo 'db unreachable' >&2; exit 1")
        .await
        .unwrap_err();
    assert!(
        error.contains("exited with code 1: db unreachable"),
        "{error}"
    );
}

#[tokio::test]
async fn garbage_output_is_an_error() {
    let error = start_with("echo 'hello, I am not JSON'").await.unwrap_err();
    assert!(error.contains("not a JSON object"), "{error}");
    assert!(error.contains("hello, I am not JSON"), "{error}");
}

#[tokio::test]
async fn a_program_that_does_not_exist_is_an_error_naming_it() {
    let hook = CommandHook::new(["/nonexistent/deputy-hook"]).unwrap();
    let error = hook
        .on_subagent_start(&start_event("researcher"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("cannot start hook command:/nonexistent/deputy-hook"),
        "{error}"
    );
}

#[tokio::test]
async fn a_hook_past_its_limit_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let body = format!(
        "sleep 60 & echo $! > {0}; echo $$ >> {0}; sleep 60",
        pids.display()
    );
    let hook = CommandHook::new([script(dir.path(), "hang.sh", &body)])
        .unwrap()
        .timeout(Duration::from_secs(3));
    let error = hook
        .on_subagent_start(&start_event("researcher"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("ran past its 3000 ms time limit and was killed"),
        "{error}"
    );
    let pids: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|line| line.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    assert!(
        eventually(|| pids.iter().all(|pid| !alive(*pid))).await,
        "{pids:?} still alive"
    );
}

#[tokio::test]
async fn a_hanging_hook_leaves_the_task_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let hook = CommandHook::new([script(dir.path(), "hang.sh", "sleep 60")])
        .unwrap()
        .timeout(Duration::from_millis(300));
    let registry = registry(HookStack::new().with_start(std::sync::Arc::new(hook)), 2);
    let task = run(
        &registry,
        "researcher",
        "scripted",
        "demo",
        Work::Complete(usage(1, 1)),
    )
    .await;
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(registry.stats().hook_failures, 1);
}

#[tokio::test]
async fn a_forked_child_that_outlives_the_hook_neither_holds_it_up_nor_survives() {
    let dir = tempfile::tempdir().unwrap();
    let child_pid = dir.path().join("child");
    let body = format!(
        "sleep 600 & echo $! > {}; echo '{{\"additionalContext\":\"forked\"}}'",
        child_pid.display()
    );
    // A hook that waited for the child's copy of stdout to close would run
    // into this limit long before the child's 600 s and report a time-out.
    let hook = CommandHook::new([script(dir.path(), "fork.sh", &body)])
        .unwrap()
        .timeout(Duration::from_secs(20));
    let decision = hook
        .on_subagent_start(&start_event("researcher"))
        .await
        .unwrap();
    assert_eq!(decision, StartDecision::AddContext("forked".into()));
    let pid: i32 = std::fs::read_to_string(&child_pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        eventually(|| !alive(pid)).await,
        "the forked child {pid} survived"
    );
}

#[tokio::test]
async fn the_event_arrives_on_stdin_with_claude_code_field_names() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    let hook = CommandHook::new([script(
        dir.path(),
        "log.sh",
        &format!("cat > {}", input.display()),
    )])
    .unwrap()
    .session_id("session-1");
    let task = hook_task("researcher", "openai", "gpt-4o");
    let id = task.id;
    let spent = usage(1_000_000, 100_000);
    hook.on_subagent_stop(&stop_event(task, spent))
        .await
        .unwrap();

    let event: serde_json::Value = serde_json::from_slice(&std::fs::read(&input).unwrap()).unwrap();
    assert_eq!(event["hook_event_name"], "SubagentStop");
    assert_eq!(event["session_id"], "session-1");
    assert_eq!(event["agent_id"], id.to_string());
    assert_eq!(event["agent_type"], "researcher");
    assert_eq!(event["stop_hook_active"], false);
    assert_eq!(
        event["last_assistant_message"],
        "Go has a happens-before model."
    );
    assert_eq!(event["task_id"], id.to_string());
    assert_eq!(event["parent_id"], serde_json::Value::Null);
    assert_eq!(event["task"], "Summarise the Go memory model");
    assert_eq!(event["status"], "completed");
    assert_eq!(event["error"], serde_json::Value::Null);
    assert_eq!(event["duration_ms"], 1200);
    assert_eq!(event["usage"]["input_tokens"], 1_000_000);
    assert_eq!(event["usage"]["output_tokens"], 100_000);
    assert_eq!(event["provider"], "openai");
    assert_eq!(event["model"], "gpt-4o");
    // gpt-4o in the snapshot: $2.50 in, $10 out per million tokens.
    let cost = event["cost_usd"].as_f64().unwrap();
    assert!((cost - 3.5).abs() < 1e-9, "{cost}");
    assert!(event["ended_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn start_events_carry_no_stop_fields() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    let hook = CommandHook::new([script(
        dir.path(),
        "log.sh",
        &format!("cat > {}", input.display()),
    )])
    .unwrap();
    hook.on_subagent_start(&start_event("researcher"))
        .await
        .unwrap();
    let event: serde_json::Value = serde_json::from_slice(&std::fs::read(&input).unwrap()).unwrap();
    assert_eq!(event["hook_event_name"], "SubagentStart");
    assert!(
        event.get("status").is_none() && event.get("stop_hook_active").is_none(),
        "{event}"
    );
    assert_eq!(event["queued_ms"], 15);
}

#[tokio::test]
async fn the_program_sees_only_path_and_the_listed_variables() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("env.txt");
    let hook = CommandHook::new([script(
        dir.path(),
        "env.sh",
        &format!("env > {}", dump.display()),
    )])
    .unwrap()
    .env("TEAM", "search");
    hook.on_subagent_start(&start_event("researcher"))
        .await
        .unwrap();
    let names: Vec<String> = std::fs::read_to_string(&dump)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once('=').map(|(name, _)| name.to_owned()))
        .collect();
    assert!(names.contains(&"TEAM".to_owned()), "{names:?}");
    assert!(names.contains(&"PATH".to_owned()), "{names:?}");
    // The test runner's own variables (cargo sets many) never get through;
    // only what the shell itself adds may appear besides.
    for name in &names {
        assert!(
            ["TEAM", "PATH", "PWD", "OLDPWD", "SHLVL", "_"].contains(&name.as_str()),
            "{name} leaked into the hook's environment: {names:?}"
        );
    }
}

#[tokio::test]
async fn a_matcher_skips_other_agents() {
    let dir = tempfile::tempdir().unwrap();
    let hook = CommandHook::new([script(dir.path(), "deny.sh", "exit 2")])
        .unwrap()
        .matcher("^research")
        .unwrap();
    assert_eq!(
        hook.on_subagent_start(&start_event("writer"))
            .await
            .unwrap(),
        StartDecision::Allow
    );
    assert!(matches!(
        hook.on_subagent_start(&start_event("researcher"))
            .await
            .unwrap(),
        StartDecision::Deny { .. }
    ));
    assert!(CommandHook::new(["x"]).unwrap().matcher("(").is_err());
}

#[tokio::test]
async fn a_shell_hook_runs_its_line_through_sh() {
    let hook =
        CommandHook::shell("read -r line; echo '{\"decision\":\"deny\",\"reason\":\"via sh\"}'")
            .unwrap();
    assert_eq!(
        hook.on_subagent_start(&start_event("researcher"))
            .await
            .unwrap(),
        StartDecision::Deny {
            reason: "via sh".into()
        }
    );
}

#[tokio::test]
async fn exit_two_on_a_stop_is_an_error_that_says_it_cannot_block() {
    let dir = tempfile::tempdir().unwrap();
    let hook = CommandHook::new([script(dir.path(), "stop.sh", "echo nope >&2; exit 2")]).unwrap();
    let error = hook
        .on_subagent_stop(&stop_event(
            hook_task("researcher", "openai", "gpt-4o"),
            usage(1, 1),
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("cannot block a SubagentStop: nope"),
        "{error}"
    );
}

/// The body of README's `python` block.
fn readme_script() -> String {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"),
    )
    .unwrap();
    let start = readme
        .find("```python\n")
        .expect("README has a python hook")
        + "```python\n".len();
    let end = start + readme[start..].find("```").unwrap();
    readme[start..end].to_owned()
}

#[tokio::test]
async fn the_readme_hook_script_gates_starts_and_keeps_a_cost_sheet() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("gate_and_cost.py");
    std::fs::write(&script, readme_script()).unwrap();
    let hook = CommandHook::new(["python3", script.to_str().unwrap()])
        .unwrap()
        .cwd(dir.path())
        .env("DEPUTY_PAUSED", "writer");

    assert_eq!(
        hook.on_subagent_start(&start_event("writer"))
            .await
            .unwrap(),
        StartDecision::Deny {
            reason: "writer is paused".into()
        }
    );
    assert_eq!(
        hook.on_subagent_start(&start_event("researcher"))
            .await
            .unwrap(),
        StartDecision::Allow
    );

    let task = hook_task("researcher", "openai", "gpt-4o");
    let id = task.id;
    hook.on_subagent_stop(&stop_event(task, usage(1_000_000, 0)))
        .await
        .unwrap();
    let sheet = std::fs::read_to_string(dir.path().join("costs.csv")).unwrap();
    assert_eq!(
        sheet.trim_end(),
        format!("{id},researcher,gpt-4o,completed,2.5")
    );
}

#[tokio::test]
async fn a_hook_that_exits_without_reading_a_large_event_is_not_held_up() {
    let dir = tempfile::tempdir().unwrap();
    // The child keeps stdin open and reads nothing, so a writer that waited
    // for the whole event to go in would wait until the time limit.
    let hook = CommandHook::new([script(
        dir.path(),
        "deny.sh",
        "sleep 600 <&0 & echo 'too big' >&2; exit 2",
    )])
    .unwrap()
    .timeout(Duration::from_secs(20));
    let mut event = start_event("researcher");
    event.task.text = "x".repeat(1 << 20).into();
    assert_eq!(
        hook.on_subagent_start(&event).await.unwrap(),
        StartDecision::Deny {
            reason: "too big".into()
        }
    );
}
