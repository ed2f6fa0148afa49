//! Per-request observability: request ids, the request span, timing
//! headers and request metrics.

use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use fletcher_engine::Timings;
use tracing::Instrument;

use crate::error::ErrorInfo;
use crate::{AppState, ROUTES};

/// Header carrying the request id, taken from the request or generated.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TOTAL_TIME: HeaderName = HeaderName::from_static("x-total-time");
const TOKENIZATION_TIME: HeaderName = HeaderName::from_static("x-tokenization-time");
const QUEUE_TIME: HeaderName = HeaderName::from_static("x-queue-time");
const INFERENCE_TIME: HeaderName = HeaderName::from_static("x-inference-time");

/// Longest request id taken from a client; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Outermost layer: runs the request inside a `request` span carrying its
/// id, method and route, so every log line of the request names them;
/// echoes `x-request-id`, adds `x-total-time` (milliseconds), records
/// `fletcher_request_duration_seconds{route}` and, for error answers,
/// `fletcher_errors_total{error_type}`. A request whose client leaves
/// before the answer is logged as such and recorded in neither metric.
pub(crate) async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(request.headers());
    let route = route_label(request.uri().path());
    let span = tracing::info_span!(
        "request",
        request_id = %id.to_str().unwrap_or_default(),
        method = %request.method(),
        route,
    );
    let mut pending = Pending {
        span: span.clone(),
        started,
        answered: false,
    };
    let mut response = next.run(request).instrument(span.clone()).await;
    pending.answered = true;
    let elapsed = started.elapsed();

    let metrics = state.engine.metrics();
    metrics
        .request_duration_seconds
        .with_label_values(&[route])
        .observe(elapsed.as_secs_f64());
    let error_type = response
        .extensions()
        .get::<ErrorInfo>()
        .map(|info| info.kind.error_type());
    if let Some(error_type) = error_type {
        metrics.errors_total.with_label_values(&[error_type]).inc();
    }
    let headers = response.headers_mut();
    headers.insert(REQUEST_ID, id);
    headers.insert(TOTAL_TIME, millis(elapsed));
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            error_type,
            latency = ?elapsed,
            "answered"
        );
    });
    response
}

/// Logs a request whose client went away before its answer: the server
/// drops the request's future then, and with it the engine's work for it.
struct Pending {
    span: tracing::Span,
    started: Instant,
    answered: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.answered {
            let latency = self.started.elapsed();
            self.span
                .in_scope(|| tracing::info!(?latency, "client went away before the answer"));
        }
    }
}

/// The client's request id when it is a short printable ASCII string,
/// otherwise a new UUID v4.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(REQUEST_ID)
        .filter(|v| {
            let b = v.as_bytes();
            !b.is_empty() && b.len() <= MAX_REQUEST_ID_LEN && b.iter().all(|c| c.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(|| {
            let id = uuid::Uuid::new_v4().hyphenated().to_string();
            HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("unknown"))
        })
}

/// The `route` label: one of [`ROUTES`], or `unmatched`, so that the
/// label's values stay few whatever paths clients ask for.
fn route_label(path: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|&&r| r == path)
        .copied()
        .unwrap_or("unmatched")
}

fn millis(d: Duration) -> HeaderValue {
    HeaderValue::from(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The engine's timing headers, in whole milliseconds as
/// text-embeddings-inference sends them.
pub(crate) fn timing_headers(timings: &Timings) -> [(HeaderName, HeaderValue); 3] {
    [
        (TOKENIZATION_TIME, millis(timings.tokenization)),
        (QUEUE_TIME, millis(timings.queue)),
        (INFERENCE_TIME, millis(timings.inference)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&h).len(), 36);
        assert!(uuid::Uuid::parse_str(request_id(&HeaderMap::new()).to_str().unwrap()).is_ok());
    }

    #[test]
    fn unknown_paths_share_one_label() {
        assert_eq!(route_label("/embed"), "/embed");
        assert_eq!(route_label("/wp-admin"), "unmatched");
    }
}
