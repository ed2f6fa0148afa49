//! Tokenization as sentence-transformers does it: surrounding whitespace
//! stripped, optional lower-casing, truncation to the model's limit with the
//! special tokens kept.

use std::path::Path;
use std::str::FromStr;

use rayon::prelude::*;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::EngineError;

/// Below this many bytes of text in all, a call tokenizes on its own
/// thread: a short sentence takes tens of microseconds, about what a hand-off
/// to another thread costs.
pub(crate) const SERIAL_BYTES: usize = 4096;

/// Whether `texts` are few and short enough to tokenize on the calling
/// thread.
pub(crate) fn is_small(texts: &[impl AsRef<str>]) -> bool {
    let mut bytes = 0;
    texts.iter().all(|t| {
        bytes += t.as_ref().len();
        bytes < SERIAL_BYTES
    })
}

/// Which end of a text is cut when it is longer than the model accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TruncationSide {
    /// Keep the end of the text.
    Left,
    /// Keep the start of the text.
    #[default]
    Right,
}

impl FromStr for TruncationSide {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "left" => Ok(Self::Left),
            "right" => Ok(Self::Right),
            other => Err(format!("unknown truncation side `{other}` (left, right)")),
        }
    }
}

/// The token ids of one text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tokens {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Whether truncation cut the text.
    pub truncated: bool,
}

/// A tokenizer per truncation side, both cutting at `max_len`.
#[derive(Debug)]
pub(crate) struct TextTokenizer {
    right: Tokenizer,
    left: Tokenizer,
    lower_case: bool,
    max_len: usize,
    /// The same tokenizer without truncation, to measure over-long texts.
    whole: Tokenizer,
}

impl TextTokenizer {
    pub fn load(path: &Path, max_len: usize, lower_case: bool) -> Result<Self, EngineError> {
        let err = |message: String| EngineError::Tokenizer {
            path: path.display().to_string(),
            message,
        };
        let mut base = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        base.with_padding(None);
        base.with_truncation(None).map_err(|e| err(e.to_string()))?;
        let with_side = |direction| {
            let mut t = base.clone();
            t.with_truncation(Some(TruncationParams {
                direction,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| err(e.to_string()))?;
            Ok::<_, EngineError>(t)
        };
        Ok(Self {
            right: with_side(TruncationDirection::Right)?,
            left: with_side(TruncationDirection::Left)?,
            whole: base,
            lower_case,
            max_len,
        })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Tokens of `text` without truncation, special tokens included.
    pub fn untruncated_len(&self, text: &str) -> Result<usize, EngineError> {
        let input = self.prepare(text);
        self.whole
            .encode_fast(input.as_ref(), true)
            .map(|e| e.len())
            .map_err(|e| EngineError::Tokenize {
                index: 0,
                message: e.to_string(),
            })
    }

    /// The text as the model reads it: stripped, lower-cased if asked.
    fn prepare<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        let stripped = python_strip(text);
        if self.lower_case {
            std::borrow::Cow::Owned(stripped.to_lowercase())
        } else {
            std::borrow::Cow::Borrowed(stripped)
        }
    }

    /// Tokenizes `texts` in parallel on the current rayon pool; inputs of
    /// fewer than [`SERIAL_BYTES`] bytes in all are tokenized on the calling
    /// thread, where handing them to other threads would cost more than the
    /// work.
    pub fn encode(
        &self,
        texts: &[impl AsRef<str> + Sync],
        side: TruncationSide,
    ) -> Result<Vec<Tokens>, EngineError> {
        let tokenizer = match side {
            TruncationSide::Left => &self.left,
            TruncationSide::Right => &self.right,
        };
        let one = |(index, text): (usize, &_)| self.encode_one(tokenizer, index, text);
        if is_small(texts) {
            texts.iter().enumerate().map(one).collect()
        } else {
            texts.par_iter().enumerate().map(one).collect()
        }
    }

    fn encode_one(
        &self,
        tokenizer: &Tokenizer,
        index: usize,
        text: &(impl AsRef<str> + ?Sized),
    ) -> Result<Tokens, EngineError> {
        let input = self.prepare(text.as_ref());
        let mut encoding =
            tokenizer
                .encode_fast(input.as_ref(), true)
                .map_err(|e| EngineError::Tokenize {
                    index,
                    message: e.to_string(),
                })?;
        let truncated = !encoding.take_overflowing().is_empty();
        let ids = encoding.get_ids().to_vec();
        Ok(Tokens {
            type_ids: encoding.get_type_ids().to_vec(),
            ids,
            truncated,
        })
    }
}

/// One token of a text, as the tokenize route reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    /// The vocabulary id.
    pub id: u32,
    /// The token's string in the vocabulary.
    pub text: String,
    /// Whether the tokenizer added it (`[CLS]`, `[SEP]`, ...).
    pub special: bool,
    /// Byte offset of the token's start in the text; `None` for special tokens.
    pub start: Option<usize>,
    /// Byte offset just past the token's end; `None` for special tokens.
    pub stop: Option<usize>,
}

impl TextTokenizer {
    /// Tokens of each text with their strings and byte offsets, truncated as
    /// the model would.
    pub fn detailed(
        &self,
        texts: &[String],
        side: TruncationSide,
    ) -> Result<Vec<Vec<TokenInfo>>, EngineError> {
        let tokenizer = match side {
            TruncationSide::Left => &self.left,
            TruncationSide::Right => &self.right,
        };
        texts
            .par_iter()
            .enumerate()
            .map(|(index, text)| {
                let encoding =
                    tokenizer
                        .encode(text.as_str(), true)
                        .map_err(|e| EngineError::Tokenize {
                            index,
                            message: e.to_string(),
                        })?;
                Ok(encoding
                    .get_ids()
                    .iter()
                    .zip(encoding.get_tokens())
                    .zip(encoding.get_special_tokens_mask())
                    .zip(encoding.get_offsets())
                    .map(|(((&id, token), &special), &(start, stop))| TokenInfo {
                        id,
                        text: token.clone(),
                        special: special == 1,
                        start: (special == 0).then_some(start),
                        stop: (special == 0).then_some(stop),
                    })
                    .collect())
            })
            .collect()
    }
}

/// Strips leading and trailing whitespace the way Python's `str.strip()`
/// does, which counts U+001C..U+001F as whitespace where Rust does not.
fn python_strip(text: &str) -> &str {
    let is_space = |c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c);
    text.trim_matches(is_space)
}

#[cfg(test)]
mod tests {
    use super::python_strip;

    #[test]
    fn strip_matches_python() {
        assert_eq!(python_strip("\u{1f} a b \t\n\u{a0}"), "a b");
        assert_eq!(python_strip("\u{200b}x\u{200b}"), "\u{200b}x\u{200b}");
        assert_eq!(python_strip("\u{3000}x"), "x");
        assert_eq!(python_strip("   "), "");
    }
}
