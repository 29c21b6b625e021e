//! A streamed answer, collected, is the answer a plain call gives: same
//! text, same tool calls, same finish reason.

use std::sync::Arc;

use deputy_providers::{ChatRequest, ChatResponse, FinishReason, Provider, StreamEvent};

use crate::round_trips::aimock_fixtures;
use crate::support::{Aimock, Llmock, ask, drain, text_of, weather_tool};

/// A plain call and a streamed one for `question` (optionally offering
/// the weather tool), plus the streamed events. Each call's user message
/// is tagged (tags of one length: llmock counts tokens from the length),
/// so no two bodies are the same. Checks the stream's shape:
/// exactly one `Finished`, last.
async fn both_ways(
    provider: &Arc<dyn Provider>,
    question: &str,
    tools: bool,
) -> (ChatResponse, ChatResponse, Vec<StreamEvent>) {
    let request = |how: &str| -> ChatRequest {
        let request = ask(&format!("{question} ({how})"));
        if tools {
            request.tools(vec![weather_tool()])
        } else {
            request
        }
    };
    let plain = provider
        .chat(&request("call A"))
        .await
        .unwrap_or_else(|error| panic!("plain: {error}"));
    let stream = provider
        .chat_stream(&request("call B"))
        .await
        .unwrap_or_else(|error| panic!("streamed: {error}"));
    let (events, error) = drain(stream).await;
    assert!(error.is_none(), "{error:?} after {events:#?}");
    let finished: Vec<&StreamEvent> = events
        .iter()
        .filter(|event| matches!(event, StreamEvent::Finished { .. }))
        .collect();
    assert_eq!(finished.len(), 1, "{events:#?}");
    assert!(
        matches!(events.last(), Some(StreamEvent::Finished { .. })),
        "{events:#?}"
    );
    let streamed = provider
        .chat_stream(&request("call C"))
        .await
        .unwrap()
        .collect_response(provider.name())
        .await
        .unwrap_or_else(|error| panic!("streamed, collected: {error}"));
    (plain, streamed, events)
}

fn assert_agree(plain: &ChatResponse, streamed: &ChatResponse) {
    assert_eq!(plain.text, streamed.text, "{plain:#?}\n{streamed:#?}");
    assert_eq!(plain.finish, streamed.finish, "{plain:#?}\n{streamed:#?}");
    let calls = |answer: &ChatResponse| {
        answer
            .tool_calls
            .iter()
            .map(|call| (call.name.clone(), call.arguments.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(calls(plain), calls(streamed), "{plain:#?}\n{streamed:#?}");
    assert_eq!(plain.usage, streamed.usage, "{plain:#?}\n{streamed:#?}");
    assert_eq!(plain.usage.requests, 1, "{plain:#?}");
}

/// Text, then a tool call, both ways, on llmock.
async fn llmock_agrees(kind: &str, model: &str) {
    let llmock = Llmock::start().await;
    let provider = llmock.provider(kind, |_| {});

    let (plain, streamed, events) = both_ways(&provider, "Describe the sea", false).await;
    assert_agree(&plain, &streamed);
    assert_eq!(plain.text, format!("Mock response from {model}."));
    assert_eq!(plain.finish, FinishReason::Stop);
    let deltas = events
        .iter()
        .filter(|event| matches!(event, StreamEvent::TextDelta { .. }))
        .count();
    assert!(deltas >= 2, "the text came in one piece: {events:#?}");
    assert_eq!(text_of(&events), plain.text);

    let (plain, streamed, events) = both_ways(&provider, "Weather in Paris?", true).await;
    assert_agree(&plain, &streamed);
    assert_eq!(plain.finish, FinishReason::ToolCalls);
    assert_eq!(plain.tool_calls.len(), 1, "{plain:#?}");
    assert_eq!(plain.tool_calls[0].name, "get_weather");
    assert!(
        events
            .iter()
            .any(|event| matches!(event, StreamEvent::ToolCall { .. })),
        "{events:#?}"
    );

    llmock.verdict().await.assert_clean();
}

#[tokio::test]
async fn openai_streamed_and_plain_answers_agree_on_llmock() {
    llmock_agrees("openai", "gpt-4o-mini").await;
}

#[tokio::test]
async fn anthropic_streamed_and_plain_answers_agree_on_llmock() {
    llmock_agrees("anthropic", "claude-3-5-haiku-latest").await;
}

#[tokio::test]
async fn gemini_streamed_and_plain_answers_agree_on_llmock() {
    llmock_agrees("gemini", "gemini-2.0-flash").await;
}

#[tokio::test]
async fn ollama_streamed_and_plain_answers_agree_on_aimock() {
    let aimock = Aimock::start(&aimock_fixtures()).await;
    let provider = aimock.provider("ollama", |_| {});

    let (plain, streamed, events) = both_ways(&provider, "hello there", false).await;
    assert_agree(&plain, &streamed);
    assert_eq!(plain.text, "Hello from aimock, a plain text reply.");
    assert_eq!(plain.finish, FinishReason::Stop);
    assert_eq!(text_of(&events), plain.text);

    let (plain, streamed, _) = both_ways(&provider, "Weather in Paris?", true).await;
    assert_agree(&plain, &streamed);
    assert_eq!(plain.finish, FinishReason::ToolCalls);
    assert_eq!(
        plain.tool_calls[0].arguments.json(),
        Ok(&serde_json::json!({"city": "Paris"}))
    );
    // Ollama sends no ids; both ways make the same one from the position.
    assert_eq!(plain.tool_calls[0].id, streamed.tool_calls[0].id);
}

/// Both ways name the model that answered, also when the server leaves
/// the name out (llmock's plain Gemini answer has no `modelVersion`; its
/// stream chunks have one): hooks bill usage by this name.
#[tokio::test]
async fn streamed_and_plain_answers_name_the_same_model_on_llmock() {
    let llmock = Llmock::start().await;
    for (kind, model) in [
        ("openai", "gpt-4o-mini"),
        ("anthropic", "claude-3-5-haiku-latest"),
        ("gemini", "gemini-2.0-flash"),
    ] {
        let provider = llmock.provider(kind, |_| {});
        let (plain, streamed, _) =
            both_ways(&provider, &format!("{kind}: which model?"), false).await;
        assert_eq!(streamed.model, model, "{kind}: {streamed:#?}");
        assert_eq!(
            plain.model, model,
            "{kind}: the plain answer names the model {:?}, the streamed one {:?}; a stream falls \
             back to the requested model when the server names none, a plain call does not",
            plain.model, streamed.model
        );
    }
}
