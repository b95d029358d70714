use serde::Serialize;

use crate::auth::TokenRejection;
use crate::rate_limit::Decision;
use warp::http::StatusCode;

/// The stable, machine-readable codes of error bodies; the OpenAPI document lists the
/// same (a test holds them equal).
macro_rules! error_codes {
    ($($variant:ident => $code:literal,)+) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode {
            $($variant,)+
        }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)+
                }
            }
        }

        impl std::fmt::Display for ErrorCode {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

error_codes! {
    BrokerUnavailable => "broker_unavailable",
    Forbidden => "forbidden",
    IdempotencyKeyInUse => "idempotency_key_in_use",
    IdempotencyKeyReused => "idempotency_key_reused",
    IdempotencyUnavailable => "idempotency_unavailable",
    Internal => "internal",
    InvalidBody => "invalid_body",
    InvalidContent => "invalid_content",
    InvalidEvent => "invalid_event",
    InvalidHeader => "invalid_header",
    InvalidIdempotencyKey => "invalid_idempotency_key",
    InvalidLimit => "invalid_limit",
    InvalidPostId => "invalid_post_id",
    InvalidQuery => "invalid_query",
    InvalidToken => "invalid_token",
    InvalidUserId => "invalid_user_id",
    LengthRequired => "length_required",
    MethodNotAllowed => "method_not_allowed",
    MissingToken => "missing_token",
    NotFound => "not_found",
    Overloaded => "overloaded",
    PayloadTooLarge => "payload_too_large",
    PostNotFound => "post_not_found",
    RateLimited => "rate_limited",
    StorageUnavailable => "storage_unavailable",
    TokenExpired => "token_expired",
    TooManyStreams => "too_many_streams",
    UnsupportedMediaType => "unsupported_media_type",
}

/// An error answered to a client: a status and a JSON body `{"error", "message"}`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
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
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
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
            TokenRejection::Missing => ErrorCode::MissingToken,
            TokenRejection::Expired => ErrorCode::TokenExpired,
            _ => ErrorCode::InvalidToken,
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
                ErrorCode::RateLimited,
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

    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// Whether the client may retry the same request later.
    pub fn is_retriable(&self) -> bool {
        self.status.is_server_error()
    }

    pub fn into_response(self) -> warp::reply::Response {
        let body = warp::reply::json(&Body {
            error: self.code.as_str(),
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
        ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route")
    } else if rejection.find::<PayloadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!(
                "request bodies are limited to {} bytes",
                crate::routes::MAX_BODY_BYTES
            ),
        )
    } else if rejection.find::<LengthRequired>().is_some() {
        ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            ErrorCode::LengthRequired,
            "send a Content-Length header",
        )
    } else if let Some(error) = rejection.find::<InvalidHeader>() {
        ApiError::bad_request(ErrorCode::InvalidHeader, error.to_string())
    } else if let Some(error) = rejection.find::<InvalidQuery>() {
        ApiError::bad_request(ErrorCode::InvalidQuery, error.to_string())
    } else if rejection.find::<MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
            "this route does not take that method",
        )
    } else if rejection.find::<UnsupportedMediaType>().is_some() {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "send application/json",
        )
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "unexpected error",
        )
    };
    Ok(error.into_response())
}
