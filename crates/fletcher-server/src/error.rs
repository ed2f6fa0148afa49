//! The server's one error type, and the one place where errors become HTTP
//! answers.
//!
//! Every failure a route can meet is an [`ApiError`]. [`ApiError::kind`]
//! decides the status code and the `error_type` a client sees; the native
//! routes answer `{"error": "...", "error_type": "..."}`, and the OpenAI
//! route rewrites the same facts into OpenAI's
//! `{"error": {"message", "type", "param", "code"}}` shape
//! ([`openai_shape`]). Faults inside the server are logged with their
//! details and answered with a generic message.

use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fletcher_engine::EngineError;
use serde_json::json;

/// The class of an error: it fixes the status code and the `error_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The body is not well-formed (bad JSON syntax, bad Arrow stream,
    /// unreadable body): 400.
    Malformed,
    /// The request is well-formed but asks for something invalid: 422.
    Validation,
    /// The body is larger than the payload limit: 413.
    PayloadTooLarge,
    /// The API key is missing or wrong: 401.
    Unauthorized,
    /// Too many texts are in flight: 429.
    Overloaded,
    /// The request waited longer than the request timeout: 504.
    Timeout,
    /// A text could not be tokenized: 422.
    Tokenizer,
    /// The model failed on a device: 500.
    Backend,
    /// The model produced NaN or infinity for a text: 500.
    InvalidOutput,
    /// The sink's buffer has no room for the rows to forward: 429.
    SinkFull,
    /// Forwarding was asked of a server without a sink: 409.
    NoSink,
    /// A fault inside the server: 500.
    Internal,
    /// The engine is not running or is shutting down: 503.
    Unhealthy,
    /// No route has this path: 404.
    NotFound,
    /// The route exists but not for this method: 405.
    MethodNotAllowed,
}

impl ErrorKind {
    /// The status code of the answer.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Malformed => StatusCode::BAD_REQUEST,
            Self::Validation | Self::Tokenizer => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Overloaded | Self::SinkFull => StatusCode::TOO_MANY_REQUESTS,
            Self::NoSink => StatusCode::CONFLICT,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Backend | Self::Internal | Self::InvalidOutput => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// The `error_type` field of native error bodies, also the label of
    /// `fletcher_errors_total`.
    pub fn error_type(self) -> &'static str {
        match self {
            Self::Malformed | Self::Validation => "Validation",
            Self::PayloadTooLarge => "PayloadTooLarge",
            Self::Unauthorized => "Unauthorized",
            Self::Overloaded => "Overloaded",
            Self::Timeout => "Timeout",
            Self::Tokenizer => "Tokenizer",
            Self::Backend => "Backend",
            Self::InvalidOutput => "InvalidOutput",
            Self::SinkFull => "SinkFull",
            Self::NoSink => "NoSink",
            Self::Internal => "Internal",
            Self::Unhealthy => "Unhealthy",
            Self::NotFound => "NotFound",
            Self::MethodNotAllowed => "MethodNotAllowed",
        }
    }

    /// The `type` and `code` of OpenAI-shaped error bodies.
    fn openai_type_code(self) -> (&'static str, &'static str) {
        match self {
            Self::Malformed | Self::Validation | Self::Tokenizer => {
                ("invalid_request_error", "invalid_value")
            }
            Self::PayloadTooLarge => ("invalid_request_error", "payload_too_large"),
            Self::Unauthorized => ("invalid_request_error", "invalid_api_key"),
            Self::Overloaded => ("rate_limit_error", "rate_limit_exceeded"),
            Self::Timeout => ("server_error", "timeout"),
            Self::Backend | Self::Internal => ("server_error", "internal_error"),
            Self::InvalidOutput => ("server_error", "invalid_output"),
            Self::SinkFull => ("rate_limit_error", "sink_full"),
            Self::NoSink => ("invalid_request_error", "no_sink"),
            Self::Unhealthy => ("server_error", "unhealthy"),
            Self::NotFound => ("invalid_request_error", "not_found"),
            Self::MethodNotAllowed => ("invalid_request_error", "method_not_allowed"),
        }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// `?forward=true` and the sink's buffer cannot take the rows.
    #[error("the sink's buffer has room for {room} rows, the request has {rows}; retry later")]
    SinkFull {
        /// Rows of the request.
        rows: usize,
        /// Rows the buffer can take now.
        room: usize,
    },
    /// `?forward=true` on a server started without `--sink`.
    #[error("forward=true needs a server started with --sink")]
    NoSink,
    /// The body is not valid JSON (syntax, truncation, bad UTF-8).
    #[error("malformed JSON body: {0}")]
    Json(serde_json::Error),
    /// The JSON is well-formed but a field is missing or has the wrong
    /// type; the message names the field's path when there is one.
    #[error("invalid request body: {0}")]
    Fields(String),
    /// The body could not be read.
    #[error("could not read the request body: {0}")]
    Body(String),
    /// The body is larger than the payload limit.
    #[error("request body larger than the payload limit of {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The query string could not be parsed.
    #[error("invalid query string: {0}")]
    Query(String),
    /// A field has a value the server does not accept.
    #[error("invalid `{field}`: {reason}")]
    Invalid {
        /// The field, as named in the request.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The request holds no text.
    #[error("`{field}` cannot be empty")]
    NoInput {
        /// The field holding the texts.
        field: &'static str,
    },
    /// One text of the request is the empty string.
    #[error("text {index} of `{field}` is empty")]
    EmptyText {
        /// The field holding the texts.
        field: &'static str,
        /// Position of the empty text.
        index: usize,
    },
    /// More texts than `--max-client-batch-size`.
    #[error("batch size {size} is larger than the maximum client batch size of {limit}")]
    BatchTooLarge {
        /// Texts in the request.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The request names a prompt the model does not define.
    #[error("unknown prompt_name `{name}`; this model's prompts: [{known}]")]
    UnknownPrompt {
        /// The name asked for.
        name: String,
        /// The model's prompt names, comma-separated.
        known: String,
    },
    /// The model pools without its prompt's tokens, which the engine does
    /// not support.
    #[error("prompt `{0}` cannot be used: this model pools without the prompt's tokens (include_prompt: false), which is not supported")]
    PromptNotPooled(String),
    /// The Arrow IPC stream could not be read.
    #[error("invalid Arrow IPC stream: {0}")]
    ArrowStream(String),
    /// The Arrow IPC stream is readable but its content is unusable.
    #[error("invalid Arrow input: {0}")]
    ArrowInput(String),
    /// The answer could not be encoded.
    #[error("could not encode the answer: {0}")]
    Encode(String),
    /// The `Authorization` header is missing or holds the wrong key.
    #[error("missing or invalid API key: send `Authorization: Bearer <key>`")]
    Unauthorized,
    /// The engine is not healthy.
    #[error("the engine is not healthy")]
    Unhealthy,
    /// No route has this path.
    #[error("no route for {path}")]
    NotFound {
        /// The request path.
        path: String,
    },
    /// The route does not answer this method.
    #[error("method {method} is not allowed here")]
    MethodNotAllowed {
        /// The request method.
        method: String,
    },
    /// The engine refused or failed the request.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl ApiError {
    /// The class of the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Json(_) | Self::Body(_) | Self::Query(_) | Self::ArrowStream(_) => {
                ErrorKind::Malformed
            }
            Self::Fields(_)
            | Self::Invalid { .. }
            | Self::NoInput { .. }
            | Self::EmptyText { .. }
            | Self::BatchTooLarge { .. }
            | Self::UnknownPrompt { .. }
            | Self::PromptNotPooled(_)
            | Self::ArrowInput(_) => ErrorKind::Validation,
            Self::PayloadTooLarge { .. } => ErrorKind::PayloadTooLarge,
            Self::Encode(_) => ErrorKind::Internal,
            Self::Unauthorized => ErrorKind::Unauthorized,
            Self::SinkFull { .. } => ErrorKind::SinkFull,
            Self::NoSink => ErrorKind::NoSink,
            Self::Unhealthy => ErrorKind::Unhealthy,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::MethodNotAllowed { .. } => ErrorKind::MethodNotAllowed,
            Self::Engine(e) => match e {
                EngineError::TooLong { .. } | EngineError::InvalidOption(_) => {
                    ErrorKind::Validation
                }
                EngineError::Tokenize { .. } => ErrorKind::Tokenizer,
                EngineError::Overloaded { .. } => ErrorKind::Overloaded,
                EngineError::Timeout { .. } => ErrorKind::Timeout,
                EngineError::Device { .. } => ErrorKind::Backend,
                EngineError::InvalidOutput { .. } => ErrorKind::InvalidOutput,
                EngineError::ShuttingDown => ErrorKind::Unhealthy,
                _ => ErrorKind::Internal,
            },
        }
    }

    /// The request field the error is about, when there is one.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            Self::Invalid { field, .. }
            | Self::NoInput { field }
            | Self::EmptyText { field, .. } => Some(field),
            Self::UnknownPrompt { .. } | Self::PromptNotPooled(_) => Some("prompt_name"),
            Self::Engine(EngineError::InvalidOption(_)) => Some("dimensions"),
            _ => None,
        }
    }

    /// The message a client sees: the error itself for the client's own
    /// mistakes, a generic sentence for faults inside the server.
    pub fn client_message(&self) -> String {
        match self.kind() {
            ErrorKind::Internal => "internal server error; the server log has the details".into(),
            ErrorKind::Backend => {
                "the model failed on this request; the server log has the details".into()
            }
            _ => self.to_string(),
        }
    }

    /// Classifies a JSON parse error: syntax faults are malformed bodies,
    /// well-formed JSON of the wrong shape is a validation error naming the
    /// offending field.
    pub(crate) fn from_json(error: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = error.path().to_string();
        let inner = error.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data if path == "." => Self::Fields(inner.to_string()),
            serde_json::error::Category::Data => Self::Fields(format!("`{path}`: {inner}")),
            _ => Self::Json(inner),
        }
    }

    /// Maps a failure to buffer the body, telling the payload limit apart.
    pub(crate) fn from_body(rejection: BytesRejection, limit: usize) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge { limit }
        } else {
            Self::Body(rejection.body_text())
        }
    }

    /// Maps a query-string parse failure.
    pub(crate) fn from_query(rejection: QueryRejection) -> Self {
        Self::Query(rejection.body_text())
    }
}

/// What an error answer carries beside its body, for the layers that
/// record metrics or reshape the body.
#[derive(Debug, Clone)]
pub(crate) struct ErrorInfo {
    pub kind: ErrorKind,
    pub message: String,
    pub param: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = self.kind();
        if matches!(kind, ErrorKind::Internal | ErrorKind::Backend) {
            tracing::error!(error = %self, error_type = kind.error_type(), "request failed");
        }
        let info = ErrorInfo {
            kind,
            message: self.client_message(),
            param: self.param(),
        };
        let body = json!({"error": info.message, "error_type": kind.error_type()});
        let mut response = (kind.status(), Json(body)).into_response();
        if kind == ErrorKind::Overloaded {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response.extensions_mut().insert(info);
        response
    }
}

/// The OpenAI-shaped body for an error answer.
pub(crate) fn openai_body(info: &ErrorInfo) -> serde_json::Value {
    let (kind, code) = info.kind.openai_type_code();
    json!({
        "error": {
            "message": info.message,
            "type": kind,
            "param": info.param,
            "code": code,
        }
    })
}

/// Layer for OpenAI routes: rewrites every error answer produced below it
/// (extractors, authentication, the handler) into OpenAI's error shape,
/// keeping status, headers and the [`ErrorInfo`] extension.
pub(crate) async fn openai_shape(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let Some(info) = response.extensions().get::<ErrorInfo>().cloned() else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = Json(openai_body(&info)).into_response().into_body();
    Response::from_parts(parts, body)
}

/// Fallback for paths no route has.
pub(crate) async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound {
        path: request.uri().path().to_owned(),
    }
}

/// Fallback for a known path asked with the wrong method.
pub(crate) async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::MethodNotAllowed {
        method: request.method().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn status_and_type(e: EngineError) -> (u16, &'static str) {
        let kind = ApiError::from(e).kind();
        (kind.status().as_u16(), kind.error_type())
    }

    #[test]
    fn engine_errors_map_to_statuses() {
        let too_long = EngineError::TooLong {
            index: 3,
            tokens: 900,
            limit: 256,
        };
        assert_eq!(status_and_type(too_long), (422, "Validation"));
        let overloaded = EngineError::Overloaded {
            requested: 10,
            in_flight: 4090,
            limit: 4096,
        };
        assert_eq!(status_and_type(overloaded), (429, "Overloaded"));
        let timeout = EngineError::Timeout {
            waited: Duration::from_secs(3),
        };
        assert_eq!(status_and_type(timeout), (504, "Timeout"));
        let tokenize = EngineError::Tokenize {
            index: 0,
            message: "bad".into(),
        };
        assert_eq!(status_and_type(tokenize), (422, "Tokenizer"));
        let device = EngineError::Device {
            device: "cpu:0".into(),
            message: "boom".into(),
        };
        assert_eq!(status_and_type(device), (500, "Backend"));
        assert_eq!(
            status_and_type(EngineError::ShuttingDown),
            (503, "Unhealthy")
        );
        assert_eq!(
            status_and_type(EngineError::Internal("x".into())),
            (500, "Internal")
        );
        assert_eq!(
            status_and_type(EngineError::ThreadPool("x".into())),
            (500, "Internal")
        );
        let option = EngineError::InvalidOption("dimensions".into());
        assert_eq!(status_and_type(option), (422, "Validation"));
    }

    #[test]
    fn internal_details_are_hidden_from_clients() {
        let e = ApiError::from(EngineError::Internal("secret path /x/y".into()));
        assert!(!e.client_message().contains("secret"));
        let e = ApiError::from(EngineError::TooLong {
            index: 1,
            tokens: 900,
            limit: 256,
        });
        assert!(e.client_message().contains("900") && e.client_message().contains("256"));
    }

    #[test]
    fn json_errors_split_syntax_from_shape() {
        let syntax = crate::extract::parse_json::<serde_json::Value>(b"{\"a\":").unwrap_err();
        assert_eq!(syntax.kind().status().as_u16(), 400);
        let shape = crate::extract::parse_json::<Vec<String>>(b"[\"a\", 1]").unwrap_err();
        assert_eq!(shape.kind().status().as_u16(), 422);
        assert!(shape.to_string().contains("`[1]`"), "{shape}");
    }

    #[test]
    fn openai_body_has_openai_fields() {
        let info = ErrorInfo {
            kind: ErrorKind::Overloaded,
            message: "busy".into(),
            param: None,
        };
        let body = openai_body(&info);
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert_eq!(body["error"]["message"], "busy");
        assert!(body["error"]["param"].is_null());
    }
}
