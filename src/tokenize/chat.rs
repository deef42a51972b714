//! Chat messages in OpenAI's shape, and rendering them with a model's Jinja chat template the
//! way HF transformers' `apply_chat_template` (and so vLLM) does.
//!
//! What transformers sets up, and what we mirror with minijinja:
//! - `trim_blocks=True`, `lstrip_blocks=True`, Jinja2's default `keep_trailing_newline=False`;
//! - `loop_controls` (`{% break %}`, `{% continue %}`);
//! - globals `raise_exception(msg)` and `strftime_now(fmt)`;
//! - a `tojson` filter that is Python's `json.dumps(x, ensure_ascii=False)` (not Jinja2's
//!   HTML-escaping one);
//! - variables `messages`, `tools=None`, `documents=None`, `add_generation_prompt`, and the
//!   special tokens (`bos_token`, `eos_token`, `unk_token`, `pad_token`) when the config has
//!   them.
//!
//! Python string methods (`.strip()`, `.startswith()`, `.split()`, ...) come from
//! minijinja-contrib's `pycompat`.
//!
//! Message content is flattened to a string as vLLM does for text-only templates (its
//! "string" content format): a list of parts becomes its text parts joined with `"\n"`, and
//! `null` becomes `""`.

use std::borrow::Cow;
use std::fmt::Write as _;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{context, Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use super::TokenizeError;

/// One chat message as an OpenAI client sends it. Fields other than `role` and `content`
/// (`name`, `tool_calls`, ...) are accepted and ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: MessageContent,
}

impl ChatMessage {
    /// A message with plain text content.
    pub fn text(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: MessageContent::Text(content.into()),
        }
    }
}

/// A message's `content`: a string, a list of parts, or `null` (an assistant message that
/// only carries tool calls).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
    #[default]
    Null,
}

/// One element of a content list, e.g. `{"type": "text", "text": "..."}`. Non-text parts
/// (images, audio) are accepted and contribute nothing to the rendered text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl MessageContent {
    /// The content as the template sees it: text parts joined with `"\n"` (vLLM's rule),
    /// `""` for `null`.
    pub fn as_text(&self) -> Cow<'_, str> {
        match self {
            MessageContent::Text(s) => Cow::Borrowed(s),
            MessageContent::Null => Cow::Borrowed(""),
            MessageContent::Parts(parts) => {
                let mut texts = parts.iter().filter_map(ContentPart::text);
                let Some(first) = texts.next() else {
                    return Cow::Borrowed("");
                };
                match texts.next() {
                    None => Cow::Borrowed(first),
                    Some(second) => {
                        let mut s = String::with_capacity(first.len() + second.len() + 1);
                        s.push_str(first);
                        for t in std::iter::once(second).chain(texts) {
                            s.push('\n');
                            s.push_str(t);
                        }
                        Cow::Owned(s)
                    }
                }
            }
        }
    }
}

impl ContentPart {
    /// The part's text if it is a text part (`text`, `input_text`, `output_text`, or untyped
    /// with a `text` field).
    pub fn text(&self) -> Option<&str> {
        match self.kind.as_deref() {
            None | Some("text" | "input_text" | "output_text") => self.text.as_deref(),
            Some(_) => None,
        }
    }
}

/// The template's name inside its environment. No file extension, so minijinja never turns
/// on HTML auto-escaping.
const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template with the special-token variables it is rendered with.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    /// `bos_token`, `eos_token`, ... as template variables (only those the config defines, so
    /// an absent one is undefined and renders as nothing, as in transformers).
    special_tokens: Value,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_len", &self.source.len())
            .field("special_tokens", &self.special_tokens)
            .finish()
    }
}

/// Marker source of the error `raise_exception` returns, so it can be told apart from
/// template bugs.
#[derive(Debug)]
struct RaisedException;

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("raise_exception")
    }
}

impl std::error::Error for RaisedException {}

impl ChatTemplate {
    /// Compiles `source` once. `origin` names where it came from, for error messages.
    pub(crate) fn compile(
        source: String,
        origin: &str,
        special_tokens: &[(&'static str, Option<&str>)],
    ) -> Result<Self, TokenizeError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|source| TokenizeError::TemplateSyntax {
                origin: origin.to_owned(),
                source,
            })?;
        let special_tokens = Value::from_iter(
            special_tokens
                .iter()
                .filter_map(|(k, v)| v.map(|v| (*k, Value::from(v)))),
        );
        Ok(ChatTemplate {
            env,
            source,
            special_tokens,
        })
    }

    /// The template's source text.
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages` as transformers' `apply_chat_template(..., tokenize=False)` does.
    pub(crate) fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizeError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_iter([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_text().as_ref())),
                ])
            })
            .collect();
        let ctx = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            tools => (),
            documents => (),
            ..self.special_tokens.clone()
        };
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|source| TokenizeError::Render { source })?;
        template.render(ctx).map_err(classify_render_error)
    }
}

fn classify_render_error(err: Error) -> TokenizeError {
    let raised = std::iter::successors(
        std::error::Error::source(&err),
        |e: &&(dyn std::error::Error + 'static)| e.source(),
    )
    .any(|e| e.is::<RaisedException>());
    if raised {
        TokenizeError::TemplateRaised {
            message: err.detail().unwrap_or("").to_owned(),
        }
    } else {
        TokenizeError::Render { source: err }
    }
}

/// `raise_exception(message)`: transformers raises `TemplateError(message)`.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message).with_source(RaisedException))
}

/// `strftime_now(format)`: the current time (UTC) formatted with a subset of Python's
/// `strftime` codes (`%Y %y %m %d %e %B %b %A %a %H %I %M %S %p %j %%`), enough for the
/// date lines of Llama 3.x-style templates.
fn strftime_now(format: String) -> Result<Value, Error> {
    Ok(Value::from(strftime(
        &format,
        time::OffsetDateTime::now_utc(),
    )?))
}

pub(crate) fn strftime(format: &str, t: time::OffsetDateTime) -> Result<String, Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let month = MONTHS[usize::from(u8::from(t.month())) - 1];
    let day = DAYS[usize::from(t.weekday().number_days_from_monday())];
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let hour12 = match t.hour() % 12 {
            0 => 12,
            h => h,
        };
        // Writing to a String cannot fail.
        let _ = match chars.next() {
            Some('Y') => write!(out, "{}", t.year()),
            Some('y') => write!(out, "{:02}", t.year().rem_euclid(100)),
            Some('m') => write!(out, "{:02}", u8::from(t.month())),
            Some('d') => write!(out, "{:02}", t.day()),
            Some('e') => write!(out, "{:2}", t.day()),
            Some('B') => write!(out, "{month}"),
            Some('b') => write!(out, "{}", &month[..3]),
            Some('A') => write!(out, "{day}"),
            Some('a') => write!(out, "{}", &day[..3]),
            Some('H') => write!(out, "{:02}", t.hour()),
            Some('I') => write!(out, "{hour12:02}"),
            Some('M') => write!(out, "{:02}", t.minute()),
            Some('S') => write!(out, "{:02}", t.second()),
            Some('p') => write!(out, "{}", if t.hour() < 12 { "AM" } else { "PM" }),
            Some('j') => write!(out, "{:03}", t.ordinal()),
            Some('%') => write!(out, "%"),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported format code %{}",
                        other.map(String::from).unwrap_or_default()
                    ),
                ))
            }
        };
    }
    Ok(out)
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`, so `{"a": 1, "b": [1, 2]}` with Python's
/// default separators and no HTML escaping.
///
/// One difference: without minijinja's `preserve_order` feature its maps iterate in key
/// order, so a map literal's keys come out sorted where Python keeps insertion order.
fn tojson(value: &Value, args: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = args.get("indent")?;
    let sort_keys: Option<bool> = args.get("sort_keys")?;
    let separators: Option<Value> = args.get("separators")?;
    let ensure_ascii: Option<bool> = args.get("ensure_ascii")?;
    args.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(usize::try_from(n).unwrap_or(0))),
            (None, Some(s)) => Some(s.to_owned()),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ))
            }
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() => {
            let a = v.get_item_by_index(0)?;
            let b = v.get_item_by_index(1)?;
            match (a.as_str(), b.as_str()) {
                (Some(a), Some(b)) => (a.to_owned(), b.to_owned()),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    ))
                }
            }
        }
        // Python's defaults: ", " without indent, "," with it.
        _ if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        _ => (", ".to_owned(), ": ".to_owned()),
    };
    let mut w = PyJson {
        out: String::new(),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    w.value(value, 0)?;
    Ok(Value::from_safe_string(w.out))
}

struct PyJson {
    out: String,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl PyJson {
    fn newline(&mut self, depth: usize) {
        if let Some(indent) = &self.indent {
            self.out.push('\n');
            for _ in 0..depth {
                self.out.push_str(indent);
            }
        }
    }

    fn value(&mut self, v: &Value, depth: usize) -> Result<(), Error> {
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self
                .out
                .push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => {
                if v.is_integer() {
                    let _ = write!(self.out, "{v}");
                } else {
                    let f = f64::try_from(v.clone())?;
                    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 {
                        let _ = write!(self.out, "{f:.1}");
                    } else if f.is_nan() {
                        self.out.push_str("NaN");
                    } else if f.is_infinite() {
                        self.out
                            .push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                    } else {
                        let _ = write!(self.out, "{f}");
                    }
                }
            }
            ValueKind::String => self.string(v.as_str().unwrap_or("")),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        let sep = self.item_sep.clone();
                        self.out.push_str(&sep);
                    }
                    self.newline(depth + 1);
                    self.value(item, depth + 1)?;
                }
                if !items.is_empty() {
                    self.newline(depth);
                }
                self.out.push(']');
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                self.out.push('{');
                for (i, key) in keys.iter().enumerate() {
                    if i > 0 {
                        let sep = self.item_sep.clone();
                        self.out.push_str(&sep);
                    }
                    self.newline(depth + 1);
                    match key.as_str() {
                        Some(s) => self.string(s),
                        None => self.string(&key.to_string()),
                    }
                    let sep = self.key_sep.clone();
                    self.out.push_str(&sep);
                    self.value(&v.get_item(key)?, depth + 1)?;
                }
                if !keys.is_empty() {
                    self.newline(depth);
                }
                self.out.push('}');
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: cannot serialize a value of kind {:?}", v.kind()),
                ))
            }
        }
        Ok(())
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                '\u{8}' => self.out.push_str("\\b"),
                '\u{c}' => self.out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        let _ = write!(self.out, "\\u{unit:04x}");
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }
}
