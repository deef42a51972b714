//! The parts of HF's `tokenizer_config.json` the router needs: the chat template, the special
//! tokens a template refers to, and `add_bos_token`.
//!
//! The file's schema varies across models and transformers versions, so it is read as loose
//! JSON and only these fields are interpreted; everything else is ignored.

use std::path::Path;

use serde_json::Value;

use super::TokenizeError;

/// What `tokenizer_config.json` says about chat rendering and special tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenizerConfig {
    /// The chat template: either one template, or named templates where `"default"` wins.
    pub chat_template: Option<ChatTemplateSource>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
    /// `add_bos_token`: when `Some(true)`, a plain prompt gets BOS even if the tokenizer's
    /// post-processor does not add it (what transformers' Llama-style tokenizers do).
    pub add_bos_token: Option<bool>,
}

/// The `chat_template` field as the config holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatTemplateSource {
    Single(String),
    /// A list of `{name, template}`; transformers uses the one named `"default"`.
    Named(Vec<(String, String)>),
}

impl ChatTemplateSource {
    /// The template transformers would use without an explicit template name, or why there
    /// is none.
    pub fn default_template(&self) -> Result<&str, String> {
        match self {
            ChatTemplateSource::Single(t) => Ok(t),
            ChatTemplateSource::Named(list) => list
                .iter()
                .find(|(name, _)| name == "default")
                .map(|(_, t)| t.as_str())
                .ok_or_else(|| {
                    let names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
                    format!("the config has named chat templates {names:?} but none is \"default\"")
                }),
        }
    }
}

impl TokenizerConfig {
    /// Reads and interprets a `tokenizer_config.json`.
    pub fn from_file(path: &Path) -> Result<Self, TokenizeError> {
        let bytes = std::fs::read(path).map_err(|source| TokenizeError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&bytes).map_err(|message| TokenizeError::Config {
            path: path.to_owned(),
            message,
        })
    }

    /// Interprets the JSON text of a `tokenizer_config.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let Value::Object(map) = value else {
            return Err("expected a JSON object".into());
        };
        let chat_template = match map.get("chat_template") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_chat_template(v)?),
        };
        let add_bos_token = match map.get("add_bos_token") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => return Err(format!("add_bos_token must be a boolean, not {other}")),
        };
        Ok(TokenizerConfig {
            chat_template,
            bos_token: special_token(&map, "bos_token")?,
            eos_token: special_token(&map, "eos_token")?,
            unk_token: special_token(&map, "unk_token")?,
            pad_token: special_token(&map, "pad_token")?,
            add_bos_token,
        })
    }
}

/// `chat_template` is a string, or a list of `{"name": ..., "template": ...}`.
pub(crate) fn parse_chat_template(v: &Value) -> Result<ChatTemplateSource, String> {
    match v {
        Value::String(s) => Ok(ChatTemplateSource::Single(s.clone())),
        Value::Array(items) => {
            let mut list = Vec::with_capacity(items.len());
            for item in items {
                let name = item.get("name").and_then(Value::as_str);
                let template = item.get("template").and_then(Value::as_str);
                match (name, template) {
                    (Some(n), Some(t)) => list.push((n.to_owned(), t.to_owned())),
                    _ => {
                        return Err(
                            "chat_template list entries must be {\"name\": str, \"template\": str}"
                                .into(),
                        )
                    }
                }
            }
            Ok(ChatTemplateSource::Named(list))
        }
        other => Err(format!(
            "chat_template must be a string or a list of named templates, not {}",
            json_kind(other)
        )),
    }
}

/// A special token is a plain string or an `AddedToken` object `{"content": ..., ...}`.
fn special_token(
    map: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<String>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(format!("{key} is an object without a string \"content\"")),
        },
        Some(other) => Err(format!(
            "{key} must be a string or an AddedToken object, not {}",
            json_kind(other)
        )),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_strings_and_added_token_objects() {
        let c = TokenizerConfig::from_json(
            br#"{"bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
                 "eos_token": "</s>", "pad_token": null, "add_bos_token": true,
                 "chat_template": "{{ bos_token }}", "model_max_length": 4096}"#,
        )
        .unwrap();
        assert_eq!(c.bos_token.as_deref(), Some("<s>"));
        assert_eq!(c.eos_token.as_deref(), Some("</s>"));
        assert_eq!(c.pad_token, None);
        assert_eq!(c.add_bos_token, Some(true));
        assert_eq!(
            c.chat_template,
            Some(ChatTemplateSource::Single("{{ bos_token }}".into()))
        );
    }

    #[test]
    fn named_templates_pick_default() {
        let c = TokenizerConfig::from_json(
            br#"{"chat_template": [{"name": "tool_use", "template": "T"},
                                   {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        assert_eq!(c.chat_template.unwrap().default_template(), Ok("D"));
        let c =
            TokenizerConfig::from_json(br#"{"chat_template": [{"name": "rag", "template": "R"}]}"#)
                .unwrap();
        let err = c.chat_template.unwrap().default_template().unwrap_err();
        assert!(err.contains("\"rag\""), "{err}");
    }

    #[test]
    fn malformed_fields_are_errors_not_panics() {
        for bad in [
            &br#"[1, 2]"#[..],
            br#"{"chat_template": 3}"#,
            br#"{"chat_template": [{"name": "default"}]}"#,
            br#"{"bos_token": {"lstrip": true}}"#,
            br#"{"eos_token": 7}"#,
            br#"{"add_bos_token": "yes"}"#,
            br#"{"truncated": "#,
        ] {
            assert!(TokenizerConfig::from_json(bad).is_err());
        }
    }
}
