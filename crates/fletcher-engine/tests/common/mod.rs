#![allow(dead_code)] // Each test binary uses a different part of this module.
//! Helpers shared by the engine's integration tests.

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// all-MiniLM-L6-v2: `FLETCHER_TEST_MODEL`, else the copy that
/// `scripts/fetch-model.sh` puts under `models/`, else the shared one.
pub fn minilm_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLETCHER_TEST_MODEL") {
        return PathBuf::from(dir);
    }
    let root = repo_root();
    for candidate in [
        root.join("models/all-MiniLM-L6-v2"),
        root.join("../shared/models/all-MiniLM-L6-v2"),
    ] {
        if candidate.join("model.safetensors").is_file() {
            return candidate;
        }
    }
    panic!("all-MiniLM-L6-v2 not found: run scripts/fetch-model.sh first");
}

/// One reference record: a text and the vector sentence-transformers gave.
#[derive(Debug, serde::Deserialize)]
pub struct Reference {
    pub text: String,
    pub embedding: Vec<f32>,
    #[serde(default)]
    pub tokens: Option<usize>,
}

/// Reads a JSONL file of [`Reference`] records under `tests/data`.
pub fn references(relative: &str) -> Vec<Reference> {
    let path = repo_root().join("tests/data").join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

/// Cosine similarity and largest absolute difference of two vectors.
pub fn compare(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len(), "dimensions differ");
    let (mut dot, mut na, mut nb, mut max) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
        max = max.max((x - y).abs());
    }
    (dot / (na.sqrt() * nb.sqrt()).max(1e-30), max)
}

/// Asserts that every vector matches its reference within the tolerances
/// the engine promises: cosine >= 0.99999 and |diff| <= 1e-4 per element.
pub fn assert_matches(got: &[Vec<f32>], want: &[Reference], what: &str) {
    assert_eq!(got.len(), want.len());
    let mut worst = (1.0f64, 0.0f64);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (cos, max) = compare(g, &w.embedding);
        assert!(
            cos >= 0.99999 && max <= 1e-4,
            "{what}: text {i} ({:?}): cosine {cos}, max abs diff {max}",
            w.text.chars().take(60).collect::<String>()
        );
        worst = (worst.0.min(cos), worst.1.max(max));
    }
    eprintln!(
        "{what}: {} texts, worst cosine {:.8}, worst max abs diff {:.2e}",
        got.len(),
        worst.0,
        worst.1
    );
}
