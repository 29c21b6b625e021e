//! The `[hooks]` and `[billing]` sections: parsing, checking and building.

use std::path::Path;

use deputy_hooks::{HooksSettings, RawBillingConfig, RawHooksConfig};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    hooks: RawHooksConfig,
    billing: Option<RawBillingConfig>,
}

fn parse(text: &str) -> File {
    toml::from_str(text).unwrap()
}

fn check(text: &str) -> Result<HooksSettings, String> {
    let file = parse(text);
    HooksSettings::from_raw(&file.hooks, file.billing.as_ref()).map_err(|error| error.to_string())
}

/// The TOML block of a Markdown or doc-comment text that holds `marker`.
fn toml_block(text: &str, marker: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(|line| {
            line.strip_prefix("//!")
                .map_or(line, |rest| rest.strip_prefix(' ').unwrap_or(rest))
        })
        .collect();
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in lines {
        match (&mut current, line.trim()) {
            (None, "```toml") => current = Some(Vec::new()),
            (Some(block), "```") => {
                blocks.push(block.join("\n"));
                current = None;
            }
            (Some(block), _) => block.push(line),
            (None, _) => {}
        }
    }
    blocks
        .into_iter()
        .find(|block| block.contains(marker))
        .unwrap_or_else(|| panic!("no toml block with {marker}"))
}

#[test]
fn the_crate_docs_example_is_valid_but_for_its_unset_secret() {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let error = check(&toml_block(&docs, "[hooks.metrics]")).unwrap_err();
    // The example names a secret variable that the test environment lacks;
    // every other key checks out.
    assert!(
        error.starts_with(
            "hooks.SubagentStop[0].secret_env: environment variable DEPUTY_WEBHOOK_SECRET is unset"
        ),
        "{error}"
    );
    assert!(!error.contains("problems"), "{error}");
}

#[test]
fn the_readme_example_is_valid_and_builds() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let settings = check(&toml_block(&readme, "[billing]")).unwrap();
    assert!(settings.metrics);
    assert!(settings.billing.is_some());
    assert!(!settings.start.is_empty() || !settings.stop.is_empty());
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    let text = "[[hooks.SubagentStart]]\nkind = \"command\"\ncommand = [\"x\"]\ntimeout = 5\n";
    let error = toml::from_str::<File>(text).err().unwrap().to_string();
    assert!(error.contains("unknown field `timeout`"), "{error}");
    let error = toml::from_str::<File>("[hooks]\nSubagentStrat = []\n")
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("unknown field `SubagentStrat`"), "{error}");
    let error = toml::from_str::<File>("[[hooks.SubagentStop]]\nkind = \"script\"\n")
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("unknown variant `script`, expected `command` or `webhook`"),
        "{error}"
    );
}

#[test]
fn every_problem_is_listed_with_its_key() {
    let error = check(
        r#"
[[hooks.SubagentStart]]
kind = "command"
command = "./gate.sh"
matcher = "(research"

[[hooks.SubagentStart]]
kind = "command"
command = ["./gate.sh"]
url = "http://x"
timeout_ms = 0

[[hooks.SubagentStop]]
kind = "webhook"
blocking = true
url = "ftp://example.com"

[[hooks.SubagentStop]]
kind = "webhook"
command = ["x"]

[billing]
budget_usd = -1
prices."house" = { input = -2.0, output = 1.0 }
"#,
    )
    .unwrap_err();
    for expected in [
        "hooks.SubagentStart[0].command: \"./gate.sh\" is a string but shell is false",
        "hooks.SubagentStart[0].matcher: invalid regex \"(research\"",
        "hooks.SubagentStart[1].url: does not apply to command hooks",
        "hooks.SubagentStart[1].timeout_ms: must be at least 1, got 0",
        "hooks.SubagentStop[0].blocking: a stop webhook cannot block",
        "hooks.SubagentStop[0].url: scheme \"ftp\" is not supported",
        "hooks.SubagentStop[1].command: does not apply to webhook hooks",
        "hooks.SubagentStop[1].url: is missing",
        "billing.budget_usd: must be a non-negative number of dollars, got -1",
        "billing.prices.house.input: must be a non-negative number",
    ] {
        assert!(
            error.contains(expected),
            "missing {expected:?} in:\n{error}"
        );
    }
}

#[tokio::test]
async fn relative_paths_are_taken_from_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    let settings = check(
        r#"
[hooks.audit]
path = "logs-audit.jsonl"

[billing]
ledger = "ledger.jsonl"
prices."house-model" = { input = 1.0, output = 2.0 }
"#,
    )
    .unwrap();
    let set = settings.build(dir.path(), Some("s-1")).unwrap();
    assert_eq!(set.session_id(), "s-1");
    assert_eq!(
        set.billing().unwrap().ledger_path(),
        Some(dir.path().join("ledger.jsonl").as_path())
    );
    assert_eq!(
        set.audit().unwrap().path(),
        dir.path().join("logs-audit.jsonl")
    );
    assert!(dir.path().join("ledger.jsonl").exists());
    // Config prices join the built-in ones.
    let prices = set.billing().unwrap().prices();
    assert!(matches!(
        prices.lookup(None, Some("house-model")),
        deputy_hooks::PriceLookup::Known(_)
    ));
    assert!(matches!(
        prices.lookup(None, Some("gpt-4o")),
        deputy_hooks::PriceLookup::Known(_)
    ));
}

#[tokio::test]
async fn an_unopenable_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let settings = check("[hooks.audit]\npath = \"missing-dir/audit.jsonl\"\n").unwrap();
    let error = settings.build(dir.path(), None).unwrap_err().to_string();
    assert!(
        error.starts_with("hooks.audit.path: cannot open"),
        "{error}"
    );
    assert!(error.contains("missing-dir/audit.jsonl"), "{error}");
}

#[cfg(unix)]
#[tokio::test]
async fn the_first_deny_wins_and_stop_hooks_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let settings = check(
        r#"
[hooks.audit]
path = "audit.jsonl"

[billing]
budget_usd = 0.0

[[hooks.SubagentStart]]
kind = "command"
shell = true
command = "touch started-marker"

[[hooks.SubagentStop]]
kind = "command"
shell = true
command = "touch stopped-marker"
"#,
    )
    .unwrap();
    let set = settings.build(dir.path(), None).unwrap();
    let registry = crate::support::registry(set.stack(), 2);
    let task = crate::support::run(
        &registry,
        "researcher",
        "openai",
        "gpt-4o",
        crate::support::Work::Complete(crate::support::usage(1, 1)),
    )
    .await;
    registry.shutdown(std::time::Duration::from_secs(10)).await;

    // Billing runs before the configured start hooks and denied: the
    // command start hook never ran, the audit saw the start, and every
    // stop hook ran.
    let failure = task.failure.unwrap();
    assert!(
        failure
            .message
            .contains("budget exhausted: $0.00 of $0.00 spent"),
        "{failure:?}"
    );
    assert!(!dir.path().join("started-marker").exists());
    assert!(dir.path().join("stopped-marker").exists());
    let audit = deputy_hooks::AuditLog::read_all(&dir.path().join("audit.jsonl")).unwrap();
    let names: Vec<&str> = audit
        .iter()
        .map(|line| line["hook_event_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["SubagentStart", "SubagentStop"]);
}

#[test]
fn limits_have_ceilings() {
    let error = check(
        "[[hooks.SubagentStop]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"\nretries = 50\ntimeout_ms = 99999999\n",
    )
    .unwrap_err();
    assert!(
        error.contains("hooks.SubagentStop[0].retries: must be at most 10, got 50"),
        "{error}"
    );
    assert!(
        error.contains(
            "hooks.SubagentStop[0].timeout_ms: must be at most 3600000 (one hour), got 99999999"
        ),
        "{error}"
    );
}

#[tokio::test]
async fn the_audit_log_and_the_ledger_cannot_share_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let settings =
        check("[hooks.audit]\npath = \"./events.jsonl\"\n\n[billing]\nledger = \"events.jsonl\"\n")
            .unwrap();
    let error = settings.build(dir.path(), None).unwrap_err().to_string();
    assert!(
        error.starts_with(
            "hooks.audit.path (./events.jsonl) and billing.ledger (events.jsonl) are both"
        ),
        "{error}"
    );
    assert!(error.contains("give each its own file"), "{error}");
}

#[tokio::test]
async fn a_ledger_reached_through_dot_dot_is_the_same_file_as_the_audit_log() {
    let settings = check(
        "[hooks.audit]\npath = \"logs/../events.jsonl\"\n\n[billing]\nledger = \"events.jsonl\"\n",
    )
    .unwrap();
    // Whether or not `logs` exists, the two name one file.
    let dir = tempfile::tempdir().unwrap();
    let error = settings.build(dir.path(), None).unwrap_err().to_string();
    assert!(
        error.starts_with(
            "hooks.audit.path (logs/../events.jsonl) and billing.ledger (events.jsonl) are both"
        ),
        "{error}"
    );
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let error = settings.build(dir.path(), None).unwrap_err().to_string();
    assert!(
        error.starts_with(
            "hooks.audit.path (logs/../events.jsonl) and billing.ledger (events.jsonl) are both"
        ),
        "{error}"
    );
    assert!(!dir.path().join("events.jsonl").exists());
    // Distinct files still build.
    let apart = check(
        "[hooks.audit]\npath = \"logs/events.jsonl\"\n\n[billing]\nledger = \"events.jsonl\"\n",
    )
    .unwrap();
    apart.build(dir.path(), None).unwrap();
}

#[tokio::test]
async fn a_missing_working_directory_is_reported_when_building() {
    let dir = tempfile::tempdir().unwrap();
    let settings = check(
        "[[hooks.SubagentStop]]\nkind = \"command\"\ncommand = [\"true\"]\ncwd = \"nowhere\"\n",
    )
    .unwrap();
    let error = settings.build(dir.path(), None).unwrap_err().to_string();
    assert!(error.starts_with("hooks.SubagentStop[0].cwd: "), "{error}");
    assert!(error.contains("nowhere is not a directory"), "{error}");
}

#[test]
fn prices_apply_with_billing_off() {
    let settings =
        check("[billing]\nenabled = false\nprices.\"house\" = { input = 1.0, output = 1.0 }\n")
            .unwrap();
    assert!(settings.billing.is_none());
    assert!(matches!(
        settings.prices.lookup(None, Some("house")),
        deputy_hooks::PriceLookup::Known(_)
    ));
}

#[test]
fn debug_output_hides_url_tokens_and_variable_values() {
    let file = parse(
        r#"
[[hooks.SubagentStart]]
kind = "command"
command = ["./gate"]
env = { API_TOKEN = "tok-123" }

[[hooks.SubagentStop]]
kind = "webhook"
url = "https://user:pw@hooks.slack.com/services/T0/B0/SECRETPART?key=abc"
"#,
    );
    let settings = HooksSettings::from_raw(&file.hooks, None).unwrap();
    for debug in [format!("{:?}", file.hooks), format!("{settings:?}")] {
        for secret in ["tok-123", "SECRETPART", "abc", "pw"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("API_TOKEN"), "{debug}");
        assert!(
            debug.contains("https://hooks.slack.com/services/…"),
            "{debug}"
        );
    }
}
