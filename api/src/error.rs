use serde::Serialize;

use crate::auth::TokenRejection;
use crate::rate_limit::Decision;
use warp::http::StatusCode;

/// An error answered to a client: a status and a JSON body `{"error", "message"}`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable code.
    pub code: &'static str,
    /// What went wrong and, where it helps, how to fix it.
    pub message: String,
    /// Headers the answer carries besides its body: a 401's `WWW-Authenticate`, a
    /// 429's `Retry-After` and rate limit headers.
    pub headers: Vec<(&'static str, String)>,
}

impl warp::reject::Reject for ApiError {}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// A 401 for a refused token, with its RFC 6750 challenge.
    pub fn unauthorized(rejection: &TokenRejection) -> Self {
        let code = match rejection {
            TokenRejection::Missing => "missing_token",
            TokenRejection::Expired => "token_expired",
            _ => "invalid_token",
        };
        let description = rejection.to_string().replace(['"', '\\'], "'");
        Self {
            headers: vec![(
                "www-authenticate",
                format!(
                    "Bearer realm=\"feedstream\", error=\"{}\", error_description=\"{description}\"",
                    rejection.error_code()
                ),
            )],
            ..Self::new(StatusCode::UNAUTHORIZED, code, rejection.to_string())
        }
    }

    /// A 429 for a request over its rate limit, with when to retry.
    pub fn rate_limited(decision: &Decision) -> Self {
        Self {
            headers: std::iter::once(("retry-after", decision.retry_after_seconds.to_string()))
                .chain(decision.headers())
                .collect(),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "over the limit of {} {} per {} s; retry in {} s",
                    decision.policy.quota,
                    decision.class.name(),
                    decision.policy.window.as_secs(),
                    decision.retry_after_seconds
                ),
            )
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// Whether the client may retry the same request later.
    pub fn is_retriable(&self) -> bool {
        self.status.is_server_error()
    }

    pub fn into_response(self) -> warp::reply::Response {
        let body = warp::reply::json(&Body {
            error: self.code,
            message: &self.message,
        });
        let mut response = warp::reply::with_status(body, self.status).into_response();
        insert_headers(&mut response, self.headers);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                warp::http::header::RETRY_AFTER,
                warp::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

use warp::Reply;

/// Adds `headers` to `response`; a value that is not a valid header value is left out.
pub(crate) fn insert_headers(
    response: &mut warp::reply::Response,
    headers: impl IntoIterator<Item = (&'static str, String)>,
) {
    for (name, value) in headers {
        if let Ok(value) = warp::http::HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
}

/// Turns every rejection into a JSON error, so no client ever sees an empty or HTML body.
pub async fn recover(
    rejection: warp::Rejection,
) -> Result<warp::reply::Response, std::convert::Infallible> {
    use warp::reject::{
        InvalidHeader, InvalidQuery, LengthRequired, MethodNotAllowed, PayloadTooLarge,
        UnsupportedMediaType,
    };
    let error = if let Some(error) = rejection.find::<ApiError>() {
        error.clone()
    } else if rejection.is_not_found() {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    } else if rejection.find::<PayloadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "request bodies are limited to {} bytes",
                crate::routes::MAX_BODY_BYTES
            ),
        )
    } else if rejection.find::<LengthRequired>().is_some() {
        ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "send a Content-Length header",
        )
    } else if let Some(error) = rejection.find::<InvalidHeader>() {
        ApiError::bad_request("invalid_header", error.to_string())
    } else if let Some(error) = rejection.find::<InvalidQuery>() {
        ApiError::bad_request("invalid_query", error.to_string())
    } else if rejection.find::<MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
    } else if rejection.find::<UnsupportedMediaType>().is_some() {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send application/json",
        )
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "unexpected error",
        )
    };
    Ok(error.into_response())
}
