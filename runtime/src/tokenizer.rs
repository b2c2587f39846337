//! Text <-> token ids, through Hugging Face's `tokenizers` crate and a model's `tokenizer.json`.
//!
//! Encoding says whether special tokens are added, as transformers does: `tokenizer(text)` runs
//! `tokenizer.json`'s post-processor (Llama's and Gemma's `TemplateProcessing` put BOS first,
//! SmolLM's adds nothing), while a rendered chat template is encoded without it, because the
//! template already wrote `bos_token` as text (special tokens written in the text are always
//! recognized). [`TextStream`] turns a stream of ids into text pieces that are always complete
//! UTF-8, for printing tokens as they are generated.

/// Why the tokenizer failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot load tokenizer.json: {0}")]
    Load(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("encoding failed: {0}")]
    Encode(String),
    #[error("decoding failed: {0}")]
    Decode(String),
}

/// A loaded tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Parses the contents of a `tokenizer.json`.
    pub fn from_bytes(tokenizer_json: &[u8]) -> Result<Tokenizer, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| TokenizerError::Load(e.to_string()))?;
        Ok(Tokenizer { inner })
    }

    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Tokenizer, TokenizerError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Tokenizer::from_bytes(&bytes)
    }

    /// Token ids of `text`. With `add_special_tokens` the post-processor runs, as in
    /// transformers' `tokenizer(text)` (a plain prompt); without, as in `apply_chat_template`
    /// (a rendered chat prompt, which carries its special tokens as text).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; `skip_special_tokens` drops tokens such as `<|im_end|>`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// A streaming decoder over this tokenizer.
    pub fn stream(&self, skip_special_tokens: bool) -> TextStream<'_> {
        TextStream {
            tokenizer: self,
            skip_special_tokens,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }
}

/// Incremental detokenization: feed ids one at a time, get text once it is complete UTF-8.
///
/// Decoding a single token alone can be wrong (a byte-level token may hold part of a character;
/// SentencePiece-style decoders drop a leading space at the start of the text), so each step
/// decodes a short window of recent ids twice, without and with the new id, and emits the
/// difference. Text ending in U+FFFD (an incomplete character) is held back until the next id.
#[derive(Debug)]
pub struct TextStream<'t> {
    tokenizer: &'t Tokenizer,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    /// Start of the window decoded for context.
    prefix_offset: usize,
    /// End of the text already emitted, in ids.
    read_offset: usize,
}

impl TextStream<'_> {
    /// Adds one id; returns the new text, if any became complete.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        self.step(false)
    }

    /// Returns whatever is still held back (possibly ending in U+FFFD).
    pub fn finish(&mut self) -> Result<Option<String>, TokenizerError> {
        self.step(true)
    }

    fn step(&mut self, flush: bool) -> Result<Option<String>, TokenizerError> {
        let t = self.tokenizer;
        let skip = self.skip_special_tokens;
        let prefix = t.decode(&self.ids[self.prefix_offset..self.read_offset], skip)?;
        let full = t.decode(&self.ids[self.prefix_offset..], skip)?;
        if full.len() <= prefix.len() || (!flush && full.ends_with('\u{FFFD}')) {
            return Ok(None);
        }
        // The window's text normally extends the prefix's; if a decoder rewrote earlier text,
        // emit from the first differing character rather than fail.
        let common = full
            .char_indices()
            .zip(prefix.chars())
            .take_while(|((_, a), b)| a == b)
            .last()
            .map_or(0, |((i, c), _)| i + c.len_utf8());
        let start = if full.starts_with(&prefix) {
            prefix.len()
        } else {
            common
        };
        let text = full[start..].to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(if text.is_empty() { None } else { Some(text) })
    }
}
