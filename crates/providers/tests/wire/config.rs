use deputy_providers::{
    ChatRequest, KeySource, Message, ProviderConfig, ProviderKind, RawProviderConfig, StreamEvent,
};
use futures::StreamExt as _;

fn parse(text: &str) -> Result<ProviderConfig, String> {
    let raw: RawProviderConfig = toml::from_str(text).map_err(|error| error.to_string())?;
    ProviderConfig::from_raw("main", raw).map_err(|error| error.to_string())
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let error = parse("kind = \"openai\"\nbase_ulr = \"http://x\"").unwrap_err();
    assert!(error.contains("unknown field `base_ulr`"), "{error}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let error = parse(
        "kind = \"openai\"\nbase_url = \"ftp://x\"\nmax_retries = 50\nmax_concurrent_requests = 0\nanthropic_version = \"2026-10-21\"\nturns = []",
    )
    .unwrap_err();
    for expected in [
        "invalid [providers.main]",
        "base_url `ftp://x` uses scheme `ftp`; use http or https",
        "max_retries must be between 0 and 10, got 50",
        "max_concurrent_requests must be at least 1, got 0",
        "anthropic_version applies only to kind = \"anthropic\"",
        "turns applies only to kind = \"scripted\"",
    ] {
        assert!(error.contains(expected), "missing `{expected}` in: {error}");
    }
    let error = parse("kind = \"mistral\"").unwrap_err();
    assert!(
        error.contains("unknown provider kind `mistral`; use one of openai, anthropic, gemini, ollama, scripted"),
        "{error}"
    );
}

#[test]
fn a_missing_key_is_named_at_build_time() {
    let config = parse("kind = \"anthropic\"").unwrap();
    assert_eq!(
        config.key_source(),
        &KeySource::Env("ANTHROPIC_API_KEY".into())
    );
    let error = config.build(|_| None).unwrap_err().to_string();
    assert!(
        error.contains("environment variable ANTHROPIC_API_KEY is not set"),
        "{error}"
    );
    let config = parse("kind = \"openai\"\napi_key_env = \"MY_GATEWAY_KEY\"").unwrap();
    let error = config.build(|_| Some("  ".into())).unwrap_err().to_string();
    assert!(
        error.contains("environment variable MY_GATEWAY_KEY is empty"),
        "{error}"
    );
    // A local server needs no key.
    let config = parse("kind = \"openai\"\nbase_url = \"http://127.0.0.1:8000/v1\"").unwrap();
    assert_eq!(config.key_source(), &KeySource::None);
    config.build(|_| None).unwrap();
}

#[test]
fn a_key_no_header_can_carry_is_refused_at_build_time_without_showing_it() {
    for kind in ["openai", "anthropic", "gemini", "ollama"] {
        let config = parse(&format!("kind = \"{kind}\"\napi_key_env = \"KEY\"")).unwrap();
        let error = config
            .build(|_| Some("sk-secret\r\nX-Injected: 1".into()))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("[providers.main]")
                && error.contains(
                    "environment variable KEY holds characters an HTTP header cannot carry"
                )
                && error.contains(&format!("set it to the {kind} API key alone")),
            "{kind}: {error}"
        );
        assert!(!error.contains("sk-secret"), "{kind}: {error}");
        config.build(|_| Some("sk-secret".into())).unwrap();
    }
    let config = parse("kind = \"openai\"\napi_key = \"sk-secret\\u0007\"").unwrap();
    let error = config.build(|_| None).unwrap_err().to_string();
    assert!(
        error.contains("api_key holds characters an HTTP header cannot carry"),
        "{error}"
    );
    assert!(!error.contains("sk-secret"), "{error}");
}

#[test]
fn an_inline_key_never_shows_in_debug_output() {
    let config = parse(
        "kind = \"gemini\"\napi_key = \"AIza-very-secret-key\"\nheaders = { x-gateway-token = \"gw-secret-token\" }",
    )
    .unwrap();
    for secret in ["AIza-very-secret-key", "gw-secret-token"] {
        assert!(!format!("{config:?}").contains(secret), "{config:?}");
    }
    let provider = config.build(|_| None).unwrap();
    assert_eq!(provider.kind(), ProviderKind::Gemini);
    for secret in ["AIza-very-secret-key", "gw-secret-token"] {
        assert!(!format!("{provider:?}").contains(secret), "{provider:?}");
    }
}

#[tokio::test]
async fn a_scripted_provider_follows_its_inline_script() {
    let config = parse(
        r#"
kind = "scripted"
latency_ms = 5

[[turns]]
when = "(?i)weather"
tool_calls = [{ name = "get_weather", arguments = { city = "Paris" } }]
usage = { input_tokens = 10, output_tokens = 2 }

[[turns]]
text = "It is sunny."
"#,
    )
    .unwrap();
    let provider = config.build(|_| None).unwrap();
    let mut request = ChatRequest::new(vec![Message::user("What is the weather?")]);
    let first = provider.chat(&request).await.unwrap();
    assert_eq!(first.tool_calls[0].name, "get_weather");
    assert_eq!(first.usage.input_tokens, 10);
    request.messages.push(first.to_message());
    request
        .messages
        .push(Message::tool_result(&first.tool_calls[0], "21C", false));
    let second = provider.chat(&request).await.unwrap();
    assert_eq!(second.text, "It is sunny.");
    request.messages.push(second.to_message());
    let error = provider.chat(&request).await.unwrap_err();
    assert!(
        error
            .message()
            .contains("has no turn for reply 3 of this conversation"),
        "{error}"
    );

    // A turn whose `when` does not match is skipped.
    let other = ChatRequest::new(vec![Message::user("Tell me a joke")]);
    let answer = provider.chat(&other).await.unwrap();
    assert_eq!(answer.text, "It is sunny.");
}

#[tokio::test]
async fn the_demo_provider_orchestrates_when_it_may_spawn_agents() {
    use deputy_providers::{GET_TASK_RESULT_TOOL, SPAWN_AGENT_TOOL, ToolSpec};
    let provider = ProviderConfig::scripted("offline").build(|_| None).unwrap();
    let tools = [SPAWN_AGENT_TOOL, GET_TASK_RESULT_TOOL]
        .map(|name| ToolSpec {
            name: name.into(),
            description: String::new(),
            parameters: serde_json::json!({"type": "object"}),
        })
        .to_vec();
    let mut request = ChatRequest::new(vec![Message::user("Compare Go and Rust")]).tools(tools);

    let spawn = provider.chat(&request).await.unwrap();
    assert_eq!(spawn.tool_calls.len(), 2);
    assert!(spawn.text.starts_with("[offline"), "{}", spawn.text);
    request.messages.push(spawn.to_message());
    for (call, task_id) in spawn.tool_calls.iter().zip(["t-go", "t-rust"]) {
        assert_eq!(call.name, SPAWN_AGENT_TOOL);
        assert_eq!(call.arguments.json().unwrap()["background"], true);
        let result =
            serde_json::json!({"task_id": task_id, "agent": "researcher", "status": "running"});
        request
            .messages
            .push(Message::tool_result(call, result.to_string(), false));
    }

    let collect = provider.chat(&request).await.unwrap();
    let asked: Vec<&str> = collect
        .tool_calls
        .iter()
        .map(|call| call.arguments.json().unwrap()["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(asked, ["t-go", "t-rust"]);
    request.messages.push(collect.to_message());
    for (call, finding) in collect
        .tool_calls
        .iter()
        .zip(["Go is simple.", "Rust is safe."])
    {
        let result = serde_json::json!({"status": "completed", "result": finding});
        request
            .messages
            .push(Message::tool_result(call, result.to_string(), false));
    }

    let synthesis = provider.chat(&request).await.unwrap();
    assert!(synthesis.tool_calls.is_empty());
    assert!(
        synthesis.text.contains("Go is simple."),
        "{}",
        synthesis.text
    );
    assert!(
        synthesis.text.contains("Rust is safe."),
        "{}",
        synthesis.text
    );

    // Streamed, the same reply arrives word by word.
    let events: Vec<StreamEvent> = provider
        .chat_stream(&request)
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert!(events.len() > 3);
    let streamed = provider
        .chat_stream(&request)
        .await
        .unwrap()
        .collect_response("offline")
        .await
        .unwrap();
    assert_eq!(streamed, synthesis);
}

#[tokio::test]
async fn the_demo_provider_writes_a_deterministic_note_for_a_worker() {
    let provider = ProviderConfig::scripted("offline").build(|_| None).unwrap();
    let request = ChatRequest::new(vec![Message::user("Write a short briefing on Rust")]);
    let first = provider.chat(&request).await.unwrap();
    let second = provider.chat(&request).await.unwrap();
    assert_eq!(first, second);
    assert!(first.text.contains("Rust"), "{}", first.text);
    assert!(first.usage.input_tokens > 0 && first.usage.output_tokens > 0);
}

#[tokio::test]
async fn script_files_are_read_as_json_or_toml_relative_to_the_config() {
    let dir = std::env::temp_dir().join(format!("deputy-script-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("script.json"),
        r#"{"turns": [{"text": "from json", "usage": {"input_tokens": 7}}]}"#,
    )
    .unwrap();
    std::fs::write(dir.join("script.toml"), "[[turns]]\ntext = \"from toml\"\n").unwrap();
    std::fs::write(
        dir.join("broken.toml"),
        "[[turns]]\nwhen = \"(\"\ntext = \"x\"\n",
    )
    .unwrap();
    let hi = ChatRequest::new(vec![Message::user("hi")]);
    for (file, expected) in [("script.json", "from json"), ("script.toml", "from toml")] {
        let provider = parse(&format!("kind = \"scripted\"\nscript_file = \"{file}\""))
            .unwrap()
            .resolve_paths(&dir)
            .build(|_| None)
            .unwrap();
        assert_eq!(provider.chat(&hi).await.unwrap().text, expected);
    }
    let error = parse("kind = \"scripted\"\nscript_file = \"broken.toml\"")
        .unwrap()
        .resolve_paths(&dir)
        .build(|_| None)
        .unwrap_err()
        .to_string();
    assert!(error.contains("`when` is not a valid regex"), "{error}");
    let error = parse("kind = \"scripted\"\nscript_file = \"missing.json\"")
        .unwrap()
        .resolve_paths(&dir)
        .build(|_| None)
        .unwrap_err()
        .to_string();
    assert!(error.contains("cannot read script file"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}
