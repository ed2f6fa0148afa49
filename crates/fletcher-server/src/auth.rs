//! The API-key check of `--api-key`.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::{ApiKey, AppState};

/// Layer for protected routes: with a key configured, a request passes only
/// with `Authorization: Bearer <key>`. The comparison takes the same time
/// whichever byte differs; it does reveal whether the lengths differ.
pub(crate) async fn require_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match &state.settings.api_key {
        Some(key) if !authorized(request.headers(), key) => Err(ApiError::Unauthorized),
        _ => Ok(next.run(request).await),
    }
}

fn authorized(headers: &HeaderMap, key: &ApiKey) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let scheme = b"bearer ";
    if value.len() < scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return false;
    }
    let given = value[scheme.len()..].trim_ascii();
    given.ct_eq(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn only_the_right_bearer_key_passes() {
        let key = ApiKey::from("k3y".to_owned());
        assert!(authorized(&with("Bearer k3y"), &key));
        assert!(authorized(&with("bearer k3y"), &key));
        assert!(!authorized(&with("Bearer k3z"), &key));
        assert!(!authorized(&with("Bearer k3"), &key));
        assert!(!authorized(&with("Basic k3y"), &key));
        assert!(!authorized(&with("k3y"), &key));
        assert!(!authorized(&HeaderMap::new(), &key));
    }
}
