//! Cache keys: what makes two embeddings the same, hashed into 32 bytes.

use std::fmt;
use std::path::Path;

use crate::{Pooling, TruncationSide};

/// Tag hashed before every key; a change in what the cache stores or how
/// keys are built changes the tag, so old entries are never read as new ones.
const KEY_DOMAIN: &[u8] = b"fletcher embedding cache key v1";

/// Tag hashed before a model fingerprint.
const MODEL_DOMAIN: &[u8] = b"fletcher model fingerprint v1";

/// The identity of one cached vector: the blake3 hash of the model
/// fingerprint, pooling, truncation settings, dataset, prompt and text, each
/// field tagged and length-prefixed so that no two different tuples hash the
/// same input.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// The key as 64 lowercase hexadecimal digits.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for byte in self.0 {
            out.push(char::from(DIGITS[usize::from(byte >> 4)]));
            out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
        }
        out
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.to_hex())
    }
}

/// Everything besides the text that decides the pooled vector of a text.
///
/// Normalization and `dimensions` are not part of it: the cache holds the
/// pooled vector before both, and every request derives its own answer from
/// that.
#[derive(Debug, Clone)]
pub struct KeyScope {
    /// The model's [`model_fingerprint`].
    pub model: [u8; 32],
    /// Pooling modes, concatenated in this order.
    pub pooling: Vec<Pooling>,
    /// The dataset named by the request; entries of different datasets never
    /// answer each other.
    pub dataset: Option<String>,
    /// Text put before every input.
    pub prompt: Option<String>,
    /// Whether over-long texts are cut.
    pub truncate: bool,
    /// Which end of an over-long text is cut.
    pub truncation_side: TruncationSide,
    /// Most tokens of one text, special tokens included.
    pub max_seq_length: usize,
}

impl KeyScope {
    /// The key of `text` in this scope. Equal scopes and texts give equal
    /// keys in every process and on every machine; any difference in a field
    /// or the text gives a different key.
    pub fn key(&self, text: &str) -> CacheKey {
        let mut hasher = self.prefix();
        finish(&mut hasher, text)
    }

    /// The keys of `texts`, in order; the scope is hashed once for all.
    pub fn keys<S: AsRef<str>>(&self, texts: &[S]) -> Vec<CacheKey> {
        let prefix = self.prefix();
        texts
            .iter()
            .map(|text| finish(&mut prefix.clone(), text.as_ref()))
            .collect()
    }

    fn prefix(&self) -> blake3::Hasher {
        let mut h = blake3::Hasher::new();
        put_bytes(&mut h, KEY_DOMAIN);
        h.update(&self.model);
        put_len(&mut h, self.pooling.len());
        for mode in &self.pooling {
            put_bytes(&mut h, mode.name().as_bytes());
        }
        put_optional(&mut h, self.dataset.as_deref());
        put_optional(&mut h, self.prompt.as_deref());
        h.update(&[u8::from(self.truncate)]);
        h.update(match self.truncation_side {
            TruncationSide::Left => b"L",
            TruncationSide::Right => b"R",
        });
        put_len(&mut h, self.max_seq_length);
        h
    }
}

fn finish(hasher: &mut blake3::Hasher, text: &str) -> CacheKey {
    put_bytes(hasher, text.as_bytes());
    CacheKey(*hasher.finalize().as_bytes())
}

fn put_len(h: &mut blake3::Hasher, len: usize) {
    h.update(&(len as u64).to_le_bytes());
}

fn put_bytes(h: &mut blake3::Hasher, bytes: &[u8]) {
    put_len(h, bytes.len());
    h.update(bytes);
}

fn put_optional(h: &mut blake3::Hasher, value: Option<&str>) {
    match value {
        None => {
            h.update(&[0]);
        }
        Some(s) => {
            h.update(&[1]);
            put_bytes(h, s.as_bytes());
        }
    }
}

/// The fingerprint of a model: blake3 over the blake3 hash of each file's
/// contents, in the order given. File names and locations do not enter it,
/// so replicas holding the same files under different paths share entries.
///
/// Pass every file that decides the vectors: the weights, `tokenizer.json`,
/// `config.json`, and `sentence_bert_config.json` where the model has one
/// (it sets lower-casing). Files are memory-mapped and hashed on rayon's
/// global pool, never read whole into memory; a file that cannot be mapped
/// is streamed instead.
pub fn model_fingerprint(files: &[&Path]) -> std::io::Result<[u8; 32]> {
    let mut outer = blake3::Hasher::new();
    put_bytes(&mut outer, MODEL_DOMAIN);
    put_len(&mut outer, files.len());
    for path in files {
        let mut inner = blake3::Hasher::new();
        inner.update_mmap_rayon(path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("fingerprinting {}: {e}", path.display()))
        })?;
        outer.update(inner.finalize().as_bytes());
    }
    Ok(*outer.finalize().as_bytes())
}
