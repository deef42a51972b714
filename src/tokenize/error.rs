//! The module's one error type.

use std::path::PathBuf;

/// Everything that can go wrong loading a tokenizer or turning a request into token ids.
/// Loading errors name the file; none of them is a panic.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `tokenizer.json` is not a tokenizer HF `tokenizers` can load.
    #[error("{} is not a valid tokenizer.json: {message}", path.display())]
    TokenizerJson { path: PathBuf, message: String },
    /// `tokenizer_config.json` (or `chat_template.json`) is malformed.
    #[error("{} is not a valid tokenizer config: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// The chat template does not compile (`origin` names the file it came from).
    #[error("chat template from {origin} does not compile: {source}")]
    TemplateSyntax {
        origin: String,
        #[source]
        source: minijinja::Error,
    },
    /// A chat request for a model without a chat template.
    #[error("no chat template: {reason}; pass one with --chat-template FILE")]
    NoChatTemplate { reason: String },
    /// The template called `raise_exception(message)`: the request is malformed for this
    /// model (for example roles that do not alternate). A client error.
    #[error("chat template rejected the messages: {message}")]
    TemplateRaised { message: String },
    /// Rendering failed for another reason (a template bug or an unexpected message shape).
    #[error("chat template failed to render: {source}")]
    Render {
        #[source]
        source: minijinja::Error,
    },
    /// The tokenizer refused the text (not expected for valid UTF-8 with a byte-level model).
    #[error("tokenizer failed to encode: {message}")]
    Encode { message: String },
}
