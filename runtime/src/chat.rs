//! Chat prompts: rendering a model's Jinja chat template with minijinja.
//!
//! The template comes from `tokenizer_config.json` (`chat_template`: a string, or a list of
//! `{name, template}` of which "default" is used) or from a separate `chat_template.jinja`,
//! which takes precedence as in transformers. Rendering follows transformers'
//! `apply_chat_template`: `trim_blocks` and `lstrip_blocks` on, loop controls available,
//! variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, a
//! `raise_exception(message)` function, and Python string/dict methods (`.strip()`,
//! `.items()`, ...) through minijinja-contrib. `strftime_now` is deliberately not provided, so
//! templates fall back to their fixed date and rendering stays deterministic.

use minijinja::value::{Serde, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

/// Why a chat prompt could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("tokenizer_config.json is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the model has no chat template (no `chat_template` in tokenizer_config.json and no chat_template.jinja)")]
    NoTemplate,
    #[error("tokenizer_config.json: key `{key}` should be {expected}")]
    WrongType { key: String, expected: &'static str },
    #[error("chat template error: {0}")]
    Template(String),
}

impl From<Error> for ChatError {
    fn from(e: Error) -> Self {
        // `{:#}` includes minijinja's location and the failing source line.
        ChatError::Template(format!("{e:#}"))
    }
}

/// One chat turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: "user".into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: "system".into(),
            content: content.into(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: "assistant".into(),
            content: content.into(),
        }
    }
}

/// A chat template with the special-token strings it may refer to.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

/// `bos_token` / `eos_token` are written either as a string or as an AddedToken object with `content`.
fn token_string(cfg: &serde_json::Value, key: &str) -> Result<Option<String>, ChatError> {
    match cfg.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Object(o)) => match o.get("content") {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(ChatError::WrongType {
                key: format!("{key}.content"),
                expected: "a string",
            }),
        },
        Some(_) => Err(ChatError::WrongType {
            key: key.into(),
            expected: "a string or an object with `content`",
        }),
    }
}

impl ChatTemplate {
    pub fn new(
        source: impl Into<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> ChatTemplate {
        ChatTemplate {
            source: source.into(),
            bos_token,
            eos_token,
        }
    }

    /// Reads the template (and `bos_token` / `eos_token`) from `tokenizer_config.json`; a
    /// `chat_template.jinja` file's contents, when given, replace the config's template.
    pub fn from_tokenizer_config(
        tokenizer_config_json: &str,
        chat_template_jinja: Option<&str>,
    ) -> Result<ChatTemplate, ChatError> {
        let cfg: serde_json::Value = serde_json::from_str(tokenizer_config_json)?;
        let source = match chat_template_jinja {
            Some(s) => s.to_string(),
            None => match cfg.get("chat_template") {
                None | Some(serde_json::Value::Null) => return Err(ChatError::NoTemplate),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Array(list)) => {
                    let named = |want: Option<&str>| {
                        list.iter().find_map(|e| {
                            let name = e.get("name")?.as_str()?;
                            let tpl = e.get("template")?.as_str()?;
                            (want.is_none_or(|w| w == name)).then(|| tpl.to_string())
                        })
                    };
                    named(Some("default"))
                        .or_else(|| named(None))
                        .ok_or(ChatError::NoTemplate)?
                }
                Some(_) => {
                    return Err(ChatError::WrongType {
                        key: "chat_template".into(),
                        expected: "a string or a list of {name, template}",
                    })
                }
            },
        };
        Ok(ChatTemplate {
            source,
            bos_token: token_string(&cfg, "bos_token")?,
            eos_token: token_string(&cfg, "eos_token")?,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the conversation into the prompt text.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        let tpl = env.template_from_str(&self.source)?;
        let out = tpl.render(minijinja::context! {
            messages => Value::from(Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        })?;
        Ok(out)
    }
}
