//! A tool round trip on every backend: the model asks for `get_weather`,
//! the result goes back, the model answers in text. Plain and streamed.

use deputy_providers::FinishReason;
use serde_json::{Value, json};

use crate::support::{Aimock, Llmock, Mode, tool_round_trip};

/// Fixtures for aimock: the tool is called until a tool result follows
/// the last user message, then answered in text (`toolCallId` cannot
/// match an Ollama follow-up: aimock drops its ids).
pub(crate) fn aimock_fixtures() -> Value {
    json!({"fixtures": [
        {
            "match": {"toolName": "get_weather", "hasToolResult": true},
            "response": {"content": "It is 21C and sunny in Paris."}
        },
        {
            "match": {"toolName": "get_weather", "hasToolResult": false},
            "response": {"toolCalls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
        },
        {
            "match": {"userMessage": "malformed"},
            "response": {"content": "never sent"},
            "chaos": {"malformedRate": 1}
        },
        {
            "match": {"userMessage": "hello"},
            "response": {"content": "Hello from aimock, a plain text reply."}
        }
    ]})
}

/// The round trip on llmock, both modes, then checks what the follow-up
/// request carried with `check_follow_up(body)`.
async fn llmock_round_trips(kind: &str, model: &str, check_follow_up: fn(&Value)) {
    let llmock = Llmock::start().await;
    let provider = llmock.provider(kind, |_| {});
    for mode in Mode::BOTH {
        let (first, second) = tool_round_trip(
            &*provider,
            mode,
            &format!("{kind} {mode:?}: weather in Paris?"),
        )
        .await;
        assert_eq!(
            first.tool_calls[0].arguments.json(),
            Ok(&json!({"city": "mock-city"})),
            "{mode:?}: llmock fills in the schema's example"
        );
        assert_eq!(
            second.text,
            format!("Mock response from {model}."),
            "{mode:?}"
        );
    }
    let requests = llmock.requests().await;
    assert_eq!(requests.len(), 4, "{requests:#?}");
    for request in &requests {
        assert_eq!(request["status"], json!(200), "{request:#}");
    }
    // The follow-ups (2nd and 4th requests) quote the call they answer.
    check_follow_up(&requests[1]["body"]);
    check_follow_up(&requests[3]["body"]);
    let verdict = llmock.verdict().await;
    verdict.assert_clean();
    verdict.assert_calls(4, 4);
}

#[tokio::test]
async fn openai_tool_round_trip_on_llmock() {
    llmock_round_trips("openai", "gpt-4o-mini", |body| {
        let messages = body["messages"].as_array().unwrap();
        let [_, assistant, tool] = messages.as_slice() else {
            panic!("three messages expected: {body:#}");
        };
        let call_id = &assistant["tool_calls"][0]["id"];
        assert!(
            call_id.as_str().is_some_and(|id| !id.is_empty()),
            "{body:#}"
        );
        assert_eq!(
            assistant["tool_calls"][0]["function"]["name"],
            "get_weather"
        );
        assert_eq!(tool["role"], "tool", "{body:#}");
        assert_eq!(&tool["tool_call_id"], call_id, "{body:#}");
        assert_eq!(tool["content"], "21C, sunny", "{body:#}");
    })
    .await;
}

#[tokio::test]
async fn anthropic_tool_round_trip_on_llmock() {
    llmock_round_trips("anthropic", "claude-3-5-haiku-latest", |body| {
        let messages = body["messages"].as_array().unwrap();
        let [_, assistant, user] = messages.as_slice() else {
            panic!("three turns expected: {body:#}");
        };
        let tool_use = &assistant["content"][0];
        assert_eq!(tool_use["type"], "tool_use", "{body:#}");
        assert_eq!(tool_use["input"], json!({"city": "mock-city"}), "{body:#}");
        let result = &user["content"][0];
        assert_eq!(user["role"], "user", "{body:#}");
        assert_eq!(result["type"], "tool_result", "{body:#}");
        assert_eq!(result["tool_use_id"], tool_use["id"], "{body:#}");
        assert_eq!(result["content"], "21C, sunny", "{body:#}");
    })
    .await;
}

#[tokio::test]
async fn gemini_tool_round_trip_on_llmock() {
    llmock_round_trips("gemini", "gemini-2.0-flash", |body| {
        let contents = body["contents"].as_array().unwrap();
        let [_, model, user] = contents.as_slice() else {
            panic!("three turns expected: {body:#}");
        };
        assert_eq!(model["role"], "model", "{body:#}");
        assert_eq!(
            model["parts"][0]["functionCall"],
            json!({"name": "get_weather", "args": {"city": "mock-city"}}),
            "made-up ids are not sent back to Gemini: {body:#}"
        );
        let response = &user["parts"][0]["functionResponse"];
        assert_eq!(response["name"], "get_weather", "{body:#}");
        assert_eq!(
            response["response"],
            json!({"result": "21C, sunny"}),
            "{body:#}"
        );
        assert!(response.get("id").is_none(), "{body:#}");
    })
    .await;
}

/// The round trip on aimock, both modes.
async fn aimock_round_trips(kind: &str) {
    let aimock = Aimock::start(&aimock_fixtures()).await;
    let provider = aimock.provider(kind, |_| {});
    for mode in Mode::BOTH {
        let (first, second) = tool_round_trip(
            &*provider,
            mode,
            &format!("{kind} {mode:?}: weather in Paris?"),
        )
        .await;
        assert_eq!(
            first.tool_calls[0].arguments.json(),
            Ok(&json!({"city": "Paris"})),
            "{mode:?}"
        );
        assert_eq!(second.text, "It is 21C and sunny in Paris.", "{mode:?}");
        assert_eq!(second.finish, FinishReason::Stop, "{mode:?}");
    }
    let journal = aimock.journal().await;
    let entries = journal.as_array().unwrap_or_else(|| panic!("{journal:#}"));
    assert_eq!(entries.len(), 4, "{journal:#}");
}

#[tokio::test]
async fn ollama_tool_round_trip_on_aimock() {
    aimock_round_trips("ollama").await;
}

#[tokio::test]
async fn openai_tool_round_trip_on_aimock() {
    aimock_round_trips("openai").await;
}
