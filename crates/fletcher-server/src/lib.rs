//! Fletcher's HTTP server: the routes of text-embeddings-inference (`/embed`,
//! `/`, `/tokenize`, `/info`, `/health`, `/metrics`), OpenAI's
//! `/v1/embeddings`, and Arrow IPC streams on `/embed`, all in front of one
//! [`Engine`].
//!
//! Two design decisions shape the crate:
//!
//! - Every inference route enters the engine through one function, which
//!   checks the texts, calls [`Engine::embed`] and maps its error; admission
//!   control (429), batching and timeouts live in the engine.
//! - Every failure is an [`ApiError`]; its [`ErrorKind`] fixes the status
//!   code and the `error_type` in one place, and the body is JSON on every
//!   route, including malformed bodies, oversized payloads and unknown paths.
//!
//! [`run`] is the `fletcher serve` command: it loads the model, then binds,
//! so the server is not listening (and `/health` cannot be asked) until the
//! model is loaded and warmed up. [`router`] builds the same application
//! for in-process use.

mod args;
mod arrow;
mod auth;
mod error;
mod extract;
mod observe;
mod routes;
mod serve;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use fletcher_engine::Engine;
use fletcher_flight::SinkHandle;

pub use args::{ApiKey, ServeArgs};
pub use error::{ApiError, ErrorKind};
pub use serve::{run, ServeError};

/// The server's own limits and switches, beside the engine's.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Most texts in one request; more are refused with 422.
    pub max_client_batch_size: usize,
    /// Most bytes in one request body; more are refused with 413.
    pub payload_limit: usize,
    /// When set, every route but `/health` and `/metrics` requires
    /// `Authorization: Bearer <key>`.
    pub api_key: Option<ApiKey>,
    /// Whether over-long texts are cut when a request does not say.
    pub auto_truncate: bool,
    /// Where `POST /embed?forward=true` sends its rows.
    pub sink: Option<SinkHandle>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_client_batch_size: 512,
            payload_limit: 2_000_000,
            api_key: None,
            auto_truncate: true,
            sink: None,
        }
    }
}

/// What every handler shares: the engine and the settings.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub engine: Engine,
    pub settings: Arc<Settings>,
}

/// The paths the server answers, also the values of the `route` label.
pub(crate) const ROUTES: &[&str] = &[
    "/",
    "/embed",
    "/v1/embeddings",
    "/tokenize",
    "/info",
    "/health",
    "/metrics",
    "/admin/fault",
];

/// The whole application for `engine` with `settings`: every route, the
/// API-key check, the payload limit, request ids, timing headers, request
/// metrics and JSON errors. Serve it with `axum::serve`.
pub fn router(engine: Engine, settings: Settings) -> Router {
    let payload_limit = settings.payload_limit;
    let state = AppState {
        engine,
        settings: Arc::new(settings),
    };
    let require_key = middleware::from_fn_with_state(state.clone(), auth::require_key);
    let native = Router::new()
        .route("/", post(routes::tei::embed))
        .route("/embed", post(routes::tei::embed))
        .route("/tokenize", post(routes::tei::tokenize))
        .route("/info", get(routes::tei::info))
        .route("/admin/fault", post(routes::tei::inject_fault))
        .route_layer(require_key.clone());
    let openai = Router::new()
        .route("/v1/embeddings", post(routes::openai::embeddings))
        .route_layer(require_key)
        .route_layer(middleware::from_fn(error::openai_shape));
    let open = Router::new()
        .route("/health", get(routes::tei::health))
        .route("/metrics", get(routes::tei::metrics));
    Router::new()
        .merge(native)
        .merge(openai)
        .merge(open)
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(payload_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            observe::track,
        ))
        .with_state(state)
}
