//! Errors the router answers itself, always in OpenAI's error shape:
//!
//! ```json
//! {"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": "..."}}
//! ```
//!
//! Errors an engine answers (a 4xx about the request, say) are not turned into these: the
//! proxy passes them through unchanged.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered by the router, with its HTTP status and OpenAI error `type`/`code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed (bad JSON, missing field, ...).
    #[error("bad request: {message}")]
    BadRequest {
        message: String,
        param: Option<String>,
    },
    /// 404: e.g. an unknown model (`code` is then `model_not_found`).
    #[error("not found: {message}")]
    NotFound { message: String, code: &'static str },
    /// 413: the request body is larger than the router accepts.
    #[error("payload too large: {message}")]
    PayloadTooLarge { message: String },
    /// 401: missing or wrong API key.
    #[error("unauthorized: {message}")]
    Unauthorized { message: String },
    /// 503: no worker can take the request (none registered, or all cooling off).
    #[error("no workers: {message}")]
    NoWorkers { message: String },
    /// 502: every attempt at an engine failed (refused, reset, 5xx).
    #[error("upstream unavailable: {message}")]
    UpstreamUnavailable { message: String },
    /// 504: every attempt at an engine timed out before its response headers.
    #[error("upstream timeout: {message}")]
    UpstreamTimeout { message: String },
    /// 500: a bug or an unexpected failure in the router. `detail` is logged, never answered.
    #[error("internal error: {detail}")]
    Internal { detail: String },
}

impl ApiError {
    /// 400 `invalid_request_error`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            message: message.into(),
            param: None,
        }
    }

    /// 400 `invalid_request_error` about one request field (`param`).
    pub fn bad_param(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    /// 404 `invalid_request_error`, code `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::NotFound {
            message: message.into(),
            code: "not_found",
        }
    }

    /// 404 `invalid_request_error`, code `model_not_found`, in OpenAI's wording.
    pub fn model_not_found(model: &str) -> ApiError {
        ApiError::NotFound {
            message: format!("The model `{model}` does not exist or you do not have access to it."),
            code: "model_not_found",
        }
    }

    /// 413 `invalid_request_error`, for a body over `limit` bytes.
    pub fn payload_too_large(limit: usize) -> ApiError {
        ApiError::PayloadTooLarge {
            message: format!("request body exceeds the limit of {limit} bytes"),
        }
    }

    /// 401 `authentication_error`.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::Unauthorized {
            message: message.into(),
        }
    }

    /// 503 `service_unavailable`.
    pub fn no_workers(message: impl Into<String>) -> ApiError {
        ApiError::NoWorkers {
            message: message.into(),
        }
    }

    /// 502 `upstream_error`.
    pub fn upstream_unavailable(message: impl Into<String>) -> ApiError {
        ApiError::UpstreamUnavailable {
            message: message.into(),
        }
    }

    /// 504 `upstream_error`.
    pub fn upstream_timeout(message: impl Into<String>) -> ApiError {
        ApiError::UpstreamTimeout {
            message: message.into(),
        }
    }

    /// 500 `server_error`; `detail` goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        ApiError::Internal {
            detail: detail.to_string(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::NoWorkers { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UpstreamUnavailable { .. } => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `error.type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. }
            | ApiError::NotFound { .. }
            | ApiError::PayloadTooLarge { .. } => "invalid_request_error",
            ApiError::Unauthorized { .. } => "authentication_error",
            ApiError::NoWorkers { .. } => "service_unavailable",
            ApiError::UpstreamUnavailable { .. } | ApiError::UpstreamTimeout { .. } => {
                "upstream_error"
            }
            ApiError::Internal { .. } => "server_error",
        }
    }

    /// OpenAI's `error.code` (`None` answers `null`).
    pub fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::BadRequest { .. } => None,
            ApiError::NotFound { code, .. } => Some(code),
            ApiError::PayloadTooLarge { .. } => Some("payload_too_large"),
            ApiError::Unauthorized { .. } => Some("invalid_api_key"),
            ApiError::NoWorkers { .. } => Some("no_workers"),
            ApiError::UpstreamUnavailable { .. } => Some("upstream_unavailable"),
            ApiError::UpstreamTimeout { .. } => Some("upstream_timeout"),
            ApiError::Internal { .. } => Some("internal_error"),
        }
    }

    /// The message a client sees (never the internal detail of a 500).
    pub fn message(&self) -> &str {
        match self {
            ApiError::BadRequest { message, .. }
            | ApiError::NotFound { message, .. }
            | ApiError::PayloadTooLarge { message }
            | ApiError::Unauthorized { message }
            | ApiError::NoWorkers { message }
            | ApiError::UpstreamUnavailable { message }
            | ApiError::UpstreamTimeout { message } => message,
            ApiError::Internal { .. } => "The router hit an internal error.",
        }
    }

    /// The JSON body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> serde_json::Value {
        let param = match self {
            ApiError::BadRequest { param, .. } => param.as_deref(),
            _ => None,
        };
        json!({
            "error": {
                "message": self.message(),
                "type": self.error_type(),
                "param": param,
                "code": self.code(),
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal { detail } = &self {
            tracing::error!(%detail, "internal error answered as 500");
        }
        let status = self.status();
        let body = self.body().to_string();
        let mut response = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(e: ApiError) -> (StatusCode, Response, serde_json::Value) {
        let response = e.into_response();
        let status = response.status();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        (
            status,
            Response::from_parts(parts, axum::body::Body::empty()),
            json,
        )
    }

    #[tokio::test]
    async fn every_variant_answers_openai_shape_with_its_status() {
        let cases: Vec<(ApiError, u16, &str, Option<&str>)> = vec![
            (
                ApiError::bad_request("bad json"),
                400,
                "invalid_request_error",
                None,
            ),
            (
                ApiError::model_not_found("gpt-9"),
                404,
                "invalid_request_error",
                Some("model_not_found"),
            ),
            (
                ApiError::not_found("no such route"),
                404,
                "invalid_request_error",
                Some("not_found"),
            ),
            (
                ApiError::payload_too_large(1024),
                413,
                "invalid_request_error",
                Some("payload_too_large"),
            ),
            (
                ApiError::unauthorized("missing key"),
                401,
                "authentication_error",
                Some("invalid_api_key"),
            ),
            (
                ApiError::no_workers("none registered"),
                503,
                "service_unavailable",
                Some("no_workers"),
            ),
            (
                ApiError::upstream_unavailable("all failed"),
                502,
                "upstream_error",
                Some("upstream_unavailable"),
            ),
            (
                ApiError::upstream_timeout("slow"),
                504,
                "upstream_error",
                Some("upstream_timeout"),
            ),
            (
                ApiError::internal("lock poisoned at src/x.rs:12"),
                500,
                "server_error",
                Some("internal_error"),
            ),
        ];
        for (err, status, ty, code) in cases {
            let message = err.message().to_owned();
            let (got_status, response, json) = answer(err).await;
            assert_eq!(got_status.as_u16(), status, "{json}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            let obj = json.as_object().unwrap();
            assert_eq!(obj.len(), 1, "only `error` at the top: {json}");
            let e = json["error"].as_object().unwrap();
            let mut keys: Vec<&str> = e.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["code", "message", "param", "type"]);
            assert_eq!(e["type"], ty);
            assert_eq!(e["message"], message.as_str());
            assert!(e["param"].is_null());
            match code {
                Some(c) => assert_eq!(e["code"], c),
                None => assert!(e["code"].is_null()),
            }
        }
    }

    #[tokio::test]
    async fn internal_error_never_leaks_its_detail() {
        let (_, _, json) = answer(ApiError::internal("secret path /etc/x at line 3")).await;
        let text = json.to_string();
        assert!(!text.contains("secret"), "{text}");
        assert!(!text.contains("/etc/x"), "{text}");
    }

    #[tokio::test]
    async fn bad_param_names_the_field_and_503_says_retry_after() {
        let (_, _, json) = answer(ApiError::bad_param("messages", "must not be empty")).await;
        assert_eq!(json["error"]["param"], "messages");
        let (status, response, _) = answer(ApiError::no_workers("none")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn model_not_found_names_the_model() {
        let e = ApiError::model_not_found("llama-99");
        assert!(e.message().contains("llama-99"));
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
    }
}
