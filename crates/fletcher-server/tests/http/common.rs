//! One engine per test binary, and a small client for the in-process router.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Request, StatusCode};
use fletcher_engine::{Embedder, Engine, EngineConfig, LoadOptions, Metrics};
use fletcher_server::{router, Settings};
use serde_json::Value;
use tower::ServiceExt;

/// Most texts in flight for the shared engine: small, so one request can
/// pass it while the other tests' requests stay well under it.
pub const MAX_CONCURRENT_INPUTS: usize = 64;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// all-MiniLM-L6-v2: `FLETCHER_TEST_MODEL`, else `models/` at the
/// repository root, else the shared copy beside the repository.
pub fn minilm_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLETCHER_TEST_MODEL") {
        return PathBuf::from(dir);
    }
    let root = repo_root();
    for candidate in [
        root.join("models/all-MiniLM-L6-v2"),
        root.join("../shared/models/all-MiniLM-L6-v2"),
        PathBuf::from("/work/shared/models/all-MiniLM-L6-v2"),
    ] {
        if candidate.join("model.safetensors").is_file() {
            return candidate;
        }
    }
    panic!("all-MiniLM-L6-v2 not found: run scripts/fetch-model.sh first");
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    engine: Engine,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = minilm_dir();
        let load = LoadOptions {
            threads: Some(2),
            ..LoadOptions::default()
        };
        let embedder = Embedder::load(dir.to_str().unwrap(), &load).unwrap();
        let config = EngineConfig {
            max_concurrent_inputs: MAX_CONCURRENT_INPUTS,
            ..EngineConfig::default()
        };
        let engine = Engine::start(embedder, config, Arc::new(Metrics::new())).unwrap();
        Fixture { runtime, engine }
    })
}

/// The shared engine.
pub fn engine() -> Engine {
    fixture().engine.clone()
}

/// An answer, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON; fails the test when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts a native error answer: status, `error_type`, and an `error`
    /// message holding every one of `facts`.
    pub fn assert_error(&self, status: u16, error_type: &str, facts: &[&str]) {
        let body = self.json();
        assert_eq!(self.status.as_u16(), status, "{body}");
        assert_eq!(body["error_type"], error_type, "{body}");
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/json",
            "{body}"
        );
        let message = body["error"].as_str().unwrap_or_default();
        for fact in facts {
            assert!(message.contains(fact), "{message:?} lacks {fact:?}");
        }
    }

    /// The body as a list of vectors.
    pub fn vectors(&self) -> Vec<Vec<f32>> {
        assert_eq!(self.status, StatusCode::OK, "{:?}", self.body);
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Sends `request` to a router over the shared engine with `settings`.
pub fn send_with(settings: Settings, request: Request<Body>) -> Reply {
    let f = fixture();
    f.runtime.block_on(async {
        let response = router(f.engine.clone(), settings)
            .oneshot(request)
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    })
}

/// Sends `request` with the default settings.
pub fn send(request: Request<Body>) -> Reply {
    send_with(Settings::default(), request)
}

/// A JSON POST.
pub fn post_json(path: &str, body: &Value) -> Request<Body> {
    post_raw(path, "application/json", body.to_string())
}

/// A POST with any body and content type.
pub fn post_raw(path: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, content_type)
        .body(body.into())
        .unwrap()
}

/// A GET.
pub fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// The first `n` records of `tests/data/minilm_reference.jsonl` as
/// `(text, vector)`.
pub fn references(n: usize) -> Vec<(String, Vec<f32>)> {
    let path = repo_root().join("tests/data/minilm_reference.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let text = v["text"].as_str().unwrap().to_owned();
            let vector = serde_json::from_value(v["embedding"].clone()).unwrap();
            (text, vector)
        })
        .collect()
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "dimensions differ");
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    let na: f64 = a.iter().map(|&x| f64::from(x).powi(2)).sum();
    let nb: f64 = b.iter().map(|&x| f64::from(x).powi(2)).sum();
    dot / (na.sqrt() * nb.sqrt())
}

/// Largest absolute difference of two vectors.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dimensions differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The L2 norm of a vector.
pub fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()
}
