//! Parses just what routing needs from OpenAI request bodies; the body itself is forwarded
//! unchanged. Every malformed input is a 400 with a message naming the field.

use serde_json::{Map, Value};

use super::error::ApiError;

/// The routing-relevant part of a request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Parsed {
    pub model: String,
    pub stream: bool,
    pub input: Input,
}

/// What gets tokenized.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Input {
    /// `/v1/completions` with a text prompt (the first one, for a batch).
    Text(String),
    /// `/v1/completions` with token ids (the first prompt, for a batch).
    Tokens(Vec<u32>),
    /// `/v1/chat/completions`: the messages, validated to be objects with a string `role`.
    Chat(Vec<Value>),
}

/// Which endpoint the body came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Completions,
    ChatCompletions,
}

impl Endpoint {
    pub(crate) fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::ChatCompletions => "/v1/chat/completions",
        }
    }

    /// The body field that carries the prompt (named in a 400 about it).
    pub(crate) fn prompt_field(self) -> &'static str {
        match self {
            Endpoint::Completions => "prompt",
            Endpoint::ChatCompletions => "messages",
        }
    }
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request(
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!("malformed JSON: {e}"))),
    }
}

fn model(m: &Map<String, Value>) -> Result<String, ApiError> {
    match m.get("model") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(ApiError::bad_param("model", "`model` must not be empty")),
        Some(_) => Err(ApiError::bad_param("model", "`model` must be a string")),
        None => Err(ApiError::bad_param(
            "model",
            "missing required field `model`",
        )),
    }
}

fn stream(m: &Map<String, Value>) -> Result<bool, ApiError> {
    match m.get("stream") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::bad_param("stream", "`stream` must be a boolean")),
    }
}

fn token_ids(v: &[Value]) -> Option<Vec<u32>> {
    v.iter()
        .map(|t| t.as_u64().and_then(|x| u32::try_from(x).ok()))
        .collect()
}

/// Parses a body for `endpoint`.
pub(crate) fn parse(endpoint: Endpoint, body: &[u8]) -> Result<Parsed, ApiError> {
    let m = object(body)?;
    let model = model(&m)?;
    let stream = stream(&m)?;
    let input = match endpoint {
        Endpoint::Completions => {
            let bad = || {
                ApiError::bad_param(
                    "prompt",
                    "`prompt` must be a string, an array of strings, an array of token ids or \
                     an array of token-id arrays",
                )
            };
            match m.get("prompt") {
                None => {
                    return Err(ApiError::bad_param(
                        "prompt",
                        "missing required field `prompt`",
                    ))
                }
                Some(Value::String(s)) => Input::Text(s.clone()),
                Some(Value::Array(a)) if a.is_empty() => {
                    return Err(ApiError::bad_param("prompt", "`prompt` must not be empty"))
                }
                Some(Value::Array(a)) => match &a[0] {
                    Value::String(s) if a.iter().all(Value::is_string) => Input::Text(s.clone()),
                    Value::Number(_) => Input::Tokens(token_ids(a).ok_or_else(bad)?),
                    Value::Array(first) if a.iter().all(Value::is_array) => {
                        Input::Tokens(token_ids(first).ok_or_else(bad)?)
                    }
                    _ => return Err(bad()),
                },
                Some(_) => return Err(bad()),
            }
        }
        Endpoint::ChatCompletions => match m.get("messages") {
            None => {
                return Err(ApiError::bad_param(
                    "messages",
                    "missing required field `messages`",
                ))
            }
            Some(Value::Array(a)) if a.is_empty() => {
                return Err(ApiError::bad_param(
                    "messages",
                    "`messages` must not be empty",
                ))
            }
            Some(Value::Array(a)) => {
                for (i, msg) in a.iter().enumerate() {
                    let ok = msg.get("role").is_some_and(Value::is_string)
                        && matches!(
                            msg.get("content"),
                            None | Some(Value::Null | Value::String(_) | Value::Array(_))
                        );
                    if !ok {
                        return Err(ApiError::bad_param(
                            "messages",
                            format!(
                                "messages[{i}] must be an object with a string `role` and a \
                                 string, array or null `content`"
                            ),
                        ));
                    }
                }
                Input::Chat(a.clone())
            }
            Some(_) => {
                return Err(ApiError::bad_param(
                    "messages",
                    "`messages` must be an array",
                ))
            }
        },
    };
    Ok(Parsed {
        model,
        stream,
        input,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(endpoint: Endpoint, body: &str) -> String {
        let e = parse(endpoint, body.as_bytes()).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST, "{body}");
        e.message().to_owned()
    }

    #[test]
    fn completions_prompts_of_every_shape() {
        let p = |b: &str| parse(Endpoint::Completions, b.as_bytes()).unwrap();
        assert_eq!(
            p(r#"{"model":"m","prompt":"hi"}"#).input,
            Input::Text("hi".into())
        );
        assert_eq!(
            p(r#"{"model":"m","prompt":["a","b"]}"#).input,
            Input::Text("a".into())
        );
        assert_eq!(
            p(r#"{"model":"m","prompt":[1,2,3]}"#).input,
            Input::Tokens(vec![1, 2, 3])
        );
        assert_eq!(
            p(r#"{"model":"m","prompt":[[4,5],[6]]}"#).input,
            Input::Tokens(vec![4, 5])
        );
        let s = p(r#"{"model":"m","prompt":"x","stream":true,"max_tokens":5}"#);
        assert!(s.stream);
        assert_eq!(s.model, "m");
    }

    #[test]
    fn chat_messages() {
        let p = parse(
            Endpoint::ChatCompletions,
            br#"{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":null}]}"#,
        )
        .unwrap();
        assert!(matches!(p.input, Input::Chat(ref v) if v.len() == 2));
    }

    #[test]
    fn bad_input_is_a_400_naming_the_field() {
        use Endpoint::*;
        assert!(err(Completions, "{nope").contains("malformed JSON"));
        assert!(err(Completions, "[1]").contains("JSON object"));
        assert!(err(Completions, r#"{"prompt":"x"}"#).contains("model"));
        assert!(err(Completions, r#"{"model":5,"prompt":"x"}"#).contains("string"));
        assert!(err(Completions, r#"{"model":"m"}"#).contains("prompt"));
        assert!(err(Completions, r#"{"model":"m","prompt":{}}"#).contains("prompt"));
        assert!(err(Completions, r#"{"model":"m","prompt":[-1]}"#).contains("prompt"));
        assert!(
            err(Completions, r#"{"model":"m","prompt":"x","stream":"yes"}"#).contains("stream")
        );
        assert!(err(ChatCompletions, r#"{"model":"m"}"#).contains("messages"));
        assert!(err(ChatCompletions, r#"{"model":"m","messages":[]}"#).contains("empty"));
        assert!(err(
            ChatCompletions,
            r#"{"model":"m","messages":[{"content":"x"}]}"#
        )
        .contains("role"));
        assert!(err(ChatCompletions, r#"{"model":"m","messages":"hi"}"#).contains("array"));
    }
}
