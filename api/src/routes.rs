use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use crate::auth::{TokenKeys, TokenRejection};
use crate::idempotency::{parse_key, Claim, IdempotencyError, IdempotencyStore};
use crate::live::LiveStreams;
use crate::publisher::{EventPublisher, PublishError};
use crate::rate_limit::{Decision, RateLimits, RouteClass};
use feedstream_core::event::{validate_content, Envelope, EventBody};
use feedstream_core::ids::{PostId, UserId};
use feedstream_read::live::Opened;
use feedstream_read::{FeedPage, FeedReader, PageRequest};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use warp::http::StatusCode;
use warp::hyper::body::Bytes;
use warp::{Filter, Rejection, Reply};

use crate::error::{insert_headers, recover, ApiError, ErrorCode};
use crate::health::health;
use crate::metrics::{ApiMetrics, ClassLabel, EventLabel, ReasonLabel};
use crate::route_table::{methods_of, route_of};

/// Largest request body accepted; a post of 500 characters is at most 2 KB of JSON.
pub const MAX_BODY_BYTES: u64 = 16 * 1024;
const DEFAULT_PAGE_SIZE: usize = 20;
const MAX_PAGE_SIZE: usize = 100;

/// What the handlers share.
pub struct ApiState {
    pub publisher: Arc<EventPublisher>,
    pub reader: FeedReader,
    pub tokens: Arc<TokenKeys>,
    pub limits: RateLimits,
    pub idempotency: IdempotencyStore,
    pub live: LiveStreams,
    pub registry: Arc<Registry>,
    pub metrics: ApiMetrics,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPost {
    content: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewFollow {
    followee_id: UserId,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    limit: Option<usize>,
    max_id: Option<PostId>,
    since_id: Option<PostId>,
    min_id: Option<PostId>,
}

/// Serves the API on `listener` until `shutdown` completes; requests in progress finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    warp::serve(routes(state))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}

pub fn routes(state: ApiState) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let metrics = state.metrics.clone();
    // Filters clone what they capture per request: one pointer, not the state's scripts.
    let state = Arc::new(state);
    // Paths before methods: an unknown path is a 404, a known one with the wrong
    // method a 405.
    let writer = caller(state.clone(), Some(RouteClass::Writes));
    let reader = caller(state.clone(), Some(RouteClass::Reads));
    // A feed page counts its read against the limit in its own Redis call.
    let page_reader = caller(state.clone(), None);
    let with_state = warp::any().map(move || state.clone());

    let create_post = warp::path!("posts")
        .and(warp::post())
        .and(writer.clone())
        .and(idempotency_key())
        .and(json_body::<NewPost>())
        .and(with_state.clone())
        .and_then(create_post);
    let delete_post = warp::path!("posts" / String)
        .and(warp::delete())
        .and(writer.clone())
        .and(idempotency_key())
        .and(with_state.clone())
        .and_then(delete_post);
    let follow = warp::path!("follows")
        .and(warp::post())
        .and(writer.clone())
        .and(idempotency_key())
        .and(json_body::<NewFollow>())
        .and(with_state.clone())
        .and_then(follow);
    let unfollow = warp::path!("follows" / String)
        .and(warp::delete())
        .and(writer.clone())
        .and(idempotency_key())
        .and(with_state.clone())
        .and_then(unfollow);
    let feed = warp::path!("feeds" / String)
        .and(warp::get())
        .and(page_reader)
        .and(warp::query::<FeedQuery>())
        .and(with_state.clone())
        .and_then(feed);
    let feed_stream = warp::path!("feeds" / String / "stream")
        .and(warp::get())
        .and(reader)
        .and(warp::header::optional::<String>("last-event-id"))
        .and(with_state.clone())
        .and_then(feed_stream);
    let health = warp::path!("health")
        .and(warp::get())
        .and(with_state.clone())
        .then(health_check);
    let openapi = warp::path!("openapi.json").and(warp::get()).map(|| {
        warp::reply::with_header(crate::openapi::DOCUMENT, "content-type", "application/json")
            .into_response()
    });
    let metrics_route = warp::path!("metrics")
        .and(warp::get())
        .and(with_state)
        .map(|state: Arc<ApiState>| metrics_text(&state.registry));

    create_post
        .or(delete_post)
        .unify()
        .or(follow)
        .unify()
        .or(unfollow)
        .unify()
        .or(feed)
        .unify()
        .or(feed_stream)
        .unify()
        .or(health)
        .unify()
        .or(metrics_route)
        .unify()
        .or(openapi)
        .unify()
        .or(method_not_allowed())
        .unify()
        .recover(recover)
        .unify()
        .with(warp::log::custom(move |info| {
            metrics.observe(
                route_of(info.path()),
                info.method().as_str(),
                info.status().as_u16(),
                info.elapsed().as_secs_f64(),
            )
        }))
}

/// A known path with a method it does not take: 405 with the `Allow` header RFC 9110
/// asks for. Any other request passes on (as not found, the weakest rejection, so a
/// route's own refusal of it wins).
fn method_not_allowed() -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone
{
    warp::method().and(warp::path::full()).and_then(
        |method: warp::http::Method, path: warp::path::FullPath| async move {
            match methods_of(path.as_str()) {
                Some(methods) if !methods.contains(&method.as_str()) => {
                    let mut response = ApiError::new(
                        StatusCode::METHOD_NOT_ALLOWED,
                        ErrorCode::MethodNotAllowed,
                        format!("{} takes {}", route_of(path.as_str()), methods.join(", ")),
                    )
                    .into_response();
                    insert_headers(&mut response, [("allow", methods.join(", "))]);
                    Ok(response)
                }
                _ => Err(warp::reject::not_found()),
            }
        },
    )
}

fn reject(error: ApiError) -> Rejection {
    warp::reject::custom(error)
}

/// Who is calling, and what the rate limiter said of this request.
struct Caller {
    user: UserId,
    decision: Option<Decision>,
}

impl Caller {
    /// `response` with this request's rate limit headers, so clients can pace themselves.
    fn stamp(&self, mut response: warp::reply::Response) -> warp::reply::Response {
        if let Some(decision) = &self.decision {
            insert_headers(&mut response, decision.headers());
        }
        response
    }
}

/// The calling user, the subject of the request's bearer token, within its rate limit
/// for `class` (`None`: the route counts the request itself).
fn caller(
    state: Arc<ApiState>,
    class: Option<RouteClass>,
) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization").and_then(move |value: Option<String>| {
        let verified = authenticate(&state, value.as_deref());
        let state = state.clone();
        async move {
            let user = verified.map_err(reject)?;
            let decision = match class {
                Some(class) => admit(&state, class, user).await.map_err(reject)?,
                None => None,
            };
            Ok::<_, Rejection>(Caller { user, decision })
        }
    })
}

/// Counts the request against the user's limit; lets it pass when Redis does not answer.
async fn admit(
    state: &ApiState,
    class: RouteClass,
    user: UserId,
) -> Result<Option<Decision>, ApiError> {
    match state.limits.check(class, user.get()).await {
        Ok(Some(decision)) => judge(state, decision).map(Some),
        Ok(None) => Ok(None),
        Err(error) => {
            state.metrics.rate_limit_errors.inc();
            tracing::debug!(%error, "rate limiter's Redis unavailable; the request passes unchecked");
            Ok(None)
        }
    }
}

/// The limiter's decision for a request: a refusal is a 429 (and counted).
fn judge(state: &ApiState, decision: Decision) -> Result<Decision, ApiError> {
    if decision.allowed {
        return Ok(decision);
    }
    state
        .metrics
        .rate_limited
        .get_or_create(&ClassLabel {
            class: decision.class.name(),
        })
        .inc();
    Err(ApiError::rate_limited(&decision))
}

fn authenticate(state: &ApiState, authorization: Option<&str>) -> Result<UserId, ApiError> {
    let token = match authorization {
        None => Err(TokenRejection::Missing),
        Some(value) => bearer_token(value).ok_or_else(|| {
            TokenRejection::Malformed("the Authorization header is not `Bearer <token>`".into())
        }),
    };
    token
        .and_then(|token| state.tokens.verify(token))
        .map_err(|rejection| {
            count_rejection(state, rejection.reason());
            ApiError::unauthorized(&rejection)
        })
}

/// The token of an RFC 6750 `Bearer` credential; the scheme is case-insensitive.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn count_rejection(state: &ApiState, reason: &'static str) {
    state
        .metrics
        .auth_rejections
        .get_or_create(&ReasonLabel { reason })
        .inc();
}

/// The `Idempotency-Key` of a write, if it sent one.
fn idempotency_key() -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Clone {
    warp::header::optional::<String>("idempotency-key").and_then(|value: Option<String>| async move {
        match value {
            None => Ok(None),
            Some(value) => parse_key(&value).map(Some).ok_or_else(|| {
                reject(ApiError::bad_request(
                    ErrorCode::InvalidIdempotencyKey,
                    "Idempotency-Key: 1 to 255 visible ASCII characters, optionally in double quotes",
                ))
            }),
        }
    })
}

/// A JSON body of at most [`MAX_BODY_BYTES`], with unknown fields refused.
fn json_body<T: DeserializeOwned + Send>() -> impl Filter<Extract = (T,), Error = Rejection> + Clone
{
    warp::body::content_length_limit(MAX_BODY_BYTES)
        .and(warp::body::bytes())
        .and_then(|body: Bytes| async move {
            serde_json::from_slice::<T>(&body).map_err(|error| {
                reject(ApiError::bad_request(
                    ErrorCode::InvalidBody,
                    format!("request body: {error}"),
                ))
            })
        })
}

fn path_user(text: &str) -> Result<UserId, Rejection> {
    text.parse::<UserId>().map_err(|error| {
        reject(ApiError::bad_request(
            ErrorCode::InvalidUserId,
            error.to_string(),
        ))
    })
}

async fn publish(state: &ApiState, event: &Envelope) -> Result<(), Rejection> {
    match state.publisher.publish(event).await {
        Ok(()) => {
            state
                .metrics
                .published
                .get_or_create(&EventLabel {
                    r#type: event.type_name(),
                })
                .inc();
            tracing::debug!(event_id = %event.event_id, actor = %event.actor_id, r#type = event.type_name(), "event accepted");
            // Before the 202: the author's next read must show what this one wrote.
            if let Err(error) = state.reader.note_accepted(event).await {
                state.metrics.read_your_writes_errors.inc();
                tracing::warn!(event_id = %event.event_id, %error, "the author's next read may not show this event until the pipeline has materialized it");
            }
            Ok(())
        }
        // Well-formed, but not an event the system takes (following oneself).
        Err(PublishError::Invalid(invalid)) => Err(reject(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidEvent,
            invalid.to_string(),
        ))),
        Err(error) => {
            state.metrics.publish_failures.inc();
            tracing::warn!(event_id = %event.event_id, %error, "event not acknowledged");
            let code = match error {
                PublishError::Overloaded(_) => ErrorCode::Overloaded,
                _ => ErrorCode::BrokerUnavailable,
            };
            Err(reject(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code,
                format!("the event was not stored, retry later: {error}"),
            )))
        }
    }
}

/// What a 202 says of an accepted event: its id, and the post's for a post.
fn answer_of(event: &Envelope) -> serde_json::Value {
    match &event.body {
        EventBody::PostCreated { post_id, .. } | EventBody::PostDeleted { post_id } => {
            serde_json::json!({ "post_id": post_id, "event_id": event.event_id })
        }
        _ => serde_json::json!({ "event_id": event.event_id }),
    }
}

/// Publishes `event` and answers 202, once per idempotency key: a retry of an answered
/// request gets the same answer and publishes nothing; a retry of one that never
/// finished publishes the event that request stored (the same ids). `check` runs
/// before a first publish only; a refusal there leaves the key unused.
async fn publish_once(
    state: &ApiState,
    caller: &Caller,
    key: Option<String>,
    request: serde_json::Value,
    event: Envelope,
    check: impl Future<Output = Result<(), Rejection>>,
) -> Result<warp::reply::Response, Rejection> {
    let Some(key) = key else {
        check.await?;
        publish(state, &event).await?;
        return Ok(caller.stamp(accepted(answer_of(&event))));
    };
    let (store, user) = (&state.idempotency, caller.user);
    let conflict = |reason: &'static str| {
        state
            .metrics
            .idempotency_conflicts
            .get_or_create(&ReasonLabel { reason })
            .inc();
    };
    let event = match store
        .claim(user, &key, &request, &event)
        .await
        .map_err(idempotency_unavailable)?
    {
        Claim::Fresh => {
            if let Err(refused) = check.await {
                store
                    .forget(user, &key)
                    .await
                    .map_err(idempotency_unavailable)?;
                return Err(refused);
            }
            event
        }
        Claim::Resume(stored) => *stored,
        Claim::Answered { status, body } => {
            state.metrics.idempotent_replays.inc();
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
            let mut response =
                warp::reply::with_status(warp::reply::json(&body), status).into_response();
            response.headers_mut().insert(
                "idempotent-replayed",
                warp::http::HeaderValue::from_static("true"),
            );
            return Ok(caller.stamp(response));
        }
        Claim::InFlight => {
            conflict("in_flight");
            return Err(reject(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::IdempotencyKeyInUse,
                "a request with this Idempotency-Key is still in progress; retry once it is answered",
            )));
        }
        Claim::Mismatch => {
            conflict("mismatch");
            return Err(reject(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was used for a different request",
            )));
        }
    };
    if let Err(refused) = publish(state, &event).await {
        // A retry with the key then publishes this same event at once.
        if let Err(error) = store.release(user, &key).await {
            tracing::warn!(%error, "an idempotency key's lease could not be ended; a retry waits for it");
        }
        return Err(refused);
    }
    let body = answer_of(&event);
    // The event is published: answer 202 even if the answer is not stored. A retry
    // then takes over the lease once it expires and republishes this same event,
    // which downstream treats as a replay.
    if let Err(error) = store
        .answer(user, &key, StatusCode::ACCEPTED.as_u16(), &body)
        .await
    {
        tracing::warn!(%error, "an idempotency key's answer was not stored; a retry republishes the same event");
    }
    Ok(caller.stamp(accepted(body)))
}

fn idempotency_unavailable(error: IdempotencyError) -> Rejection {
    tracing::error!(%error, "idempotency keys unavailable");
    reject(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::IdempotencyUnavailable,
        format!(
            "the Idempotency-Key could not be checked, nothing was published; retry later: {error}"
        ),
    ))
}

fn accepted(body: serde_json::Value) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(&body), StatusCode::ACCEPTED).into_response()
}

async fn create_post(
    caller: Caller,
    key: Option<String>,
    post: NewPost,
    state: Arc<ApiState>,
) -> Result<warp::reply::Response, Rejection> {
    validate_content(&post.content).map_err(|invalid| {
        reject(ApiError::bad_request(
            ErrorCode::InvalidContent,
            invalid.to_string(),
        ))
    })?;
    let request = serde_json::json!({ "route": "POST /posts", "content": post.content });
    let event = state.publisher.post_created(caller.user, post.content);
    publish_once(&state, &caller, key, request, event, async { Ok(()) }).await
}

/// Only the author deletes a post. Anyone else's post, an unknown one and a deleted one
/// are all 404: whether a post exists is not disclosed to other users.
async fn delete_post(
    post_id: String,
    caller: Caller,
    key: Option<String>,
    state: Arc<ApiState>,
) -> Result<warp::reply::Response, Rejection> {
    let user = caller.user;
    let post_id = post_id.parse::<PostId>().map_err(|error| {
        reject(ApiError::bad_request(
            ErrorCode::InvalidPostId,
            error.to_string(),
        ))
    })?;
    let request = serde_json::json!({ "route": "DELETE /posts", "post_id": post_id });
    let event = state.publisher.post_deleted(user, post_id);
    let check = async {
        let deletable = state
            .reader
            .deletable(user, post_id)
            .await
            .map_err(storage_unavailable)?;
        if !deletable {
            return Err(reject(ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::PostNotFound,
                format!("user {user} has no post {post_id}"),
            )));
        }
        Ok(())
    };
    publish_once(&state, &caller, key, request, event, check).await
}

fn storage_unavailable(error: feedstream_read::StorageError) -> Rejection {
    tracing::error!(%error, "storage read failed");
    reject(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StorageUnavailable,
        format!("storage could not be read, retry later: {error}"),
    ))
}

async fn follow(
    caller: Caller,
    key: Option<String>,
    body: NewFollow,
    state: Arc<ApiState>,
) -> Result<warp::reply::Response, Rejection> {
    let request = serde_json::json!({ "route": "POST /follows", "followee_id": body.followee_id });
    let event = state.publisher.followed(caller.user, body.followee_id);
    publish_once(&state, &caller, key, request, event, async { Ok(()) }).await
}

async fn unfollow(
    followee: String,
    caller: Caller,
    key: Option<String>,
    state: Arc<ApiState>,
) -> Result<warp::reply::Response, Rejection> {
    let followee = path_user(&followee)?;
    let request = serde_json::json!({ "route": "DELETE /follows", "followee_id": followee });
    let event = state.publisher.unfollowed(caller.user, followee);
    publish_once(&state, &caller, key, request, event, async { Ok(()) }).await
}

/// The owner of the feed at `path`, who must be the caller: a home feed is private.
fn own_feed(state: &ApiState, caller: &Caller, path: &str) -> Result<UserId, Rejection> {
    let user = path_user(path)?;
    if user != caller.user {
        count_rejection(state, "forbidden");
        return Err(reject(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!(
                "a home feed is private: user {} cannot read the feed of user {user}",
                caller.user
            ),
        )));
    }
    Ok(user)
}

async fn feed(
    user: String,
    caller: Caller,
    query: FeedQuery,
    state: Arc<ApiState>,
) -> Result<warp::reply::Response, Rejection> {
    let user = own_feed(&state, &caller, &user)?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(reject(ApiError::bad_request(
            ErrorCode::InvalidLimit,
            format!("limit must be between 1 and {MAX_PAGE_SIZE}"),
        )));
    }
    let request = PageRequest {
        max_id: query.max_id,
        since_id: query.since_id,
        min_id: query.min_id,
        limit,
    };
    let step = state.limits.step(RouteClass::Reads, user.get());
    let counted = state
        .reader
        .counted_page(user, &request, step.as_ref())
        .await
        .map_err(storage_unavailable)?;
    let decision = match counted.answer {
        Some(answer) => state.limits.decision(RouteClass::Reads, answer),
        None => {
            if step.is_some() {
                // Redis did not answer: the page came from PostgreSQL, unchecked.
                state.metrics.rate_limit_errors.inc();
            }
            None
        }
    };
    let decision = decision
        .map(|decision| judge(&state, decision))
        .transpose()
        .map_err(reject)?;
    let caller = Caller { decision, ..caller };
    let page = counted.page.unwrap_or_default();
    let mut response = warp::reply::json(&page.posts).into_response();
    if let Some(link) = link_header(user, limit, &page) {
        if let Ok(value) = warp::http::HeaderValue::from_str(&link) {
            response.headers_mut().insert("link", value);
        }
    }
    Ok(caller.stamp(response))
}

/// The feed's changes as Server-Sent Events (see [`crate::live`]), after
/// `Last-Event-ID` if the client sent one. A malformed one is treated as too old.
async fn feed_stream(
    user: String,
    caller: Caller,
    last_event_id: Option<String>,
    state: Arc<ApiState>,
) -> Result<warp::reply::Response, Rejection> {
    let user = own_feed(&state, &caller, &user)?;
    let refused = |reason: &'static str, error: ApiError| {
        state
            .metrics
            .sse_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
        reject(error)
    };
    let admission = state.live.admit(&state.metrics).ok_or_else(|| {
        refused(
            "total",
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Overloaded,
                "this instance serves as many live feeds as it may; retry later",
            ),
        )
    })?;
    let resume = last_event_id.map(|id| {
        if feedstream_read::live::is_stream_id(id.trim()) {
            id.trim().to_string()
        } else {
            "0-0".to_string()
        }
    });
    let opened = state
        .reader
        .open_live(user, state.live.options(resume))
        .await
        .map_err(storage_unavailable)?;
    let (feed, opening) = match opened {
        Opened::Listening(feed, opening) => (feed, opening),
        Opened::TooMany => {
            return Err(refused(
                "per_user",
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::TooManyStreams,
                    format!(
                        "user {user} has {} live feeds open already; close one",
                        state.live.settings().max_per_user
                    ),
                ),
            ))
        }
    };
    let response = state
        .live
        .listen(user, feed, opening, state.reader.clone(), admission);
    Ok(caller.stamp(response))
}

/// RFC 8288 links to the next (older) and previous (newer) pages, as Mastodon sends
/// them; none for a page that covered no entry.
fn link_header(user: UserId, limit: usize, page: &FeedPage) -> Option<String> {
    let (newest, oldest) = (page.newest?, page.oldest?);
    Some(format!(
        "</feeds/{user}?limit={limit}&max_id={oldest}>; rel=\"next\", \
         </feeds/{user}?limit={limit}&min_id={newest}>; rel=\"prev\""
    ))
}

async fn health_check(state: Arc<ApiState>) -> warp::reply::Response {
    let report = health(state.publisher.clone(), &state.reader).await;
    let status = if report.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    warp::reply::with_status(warp::reply::json(&report), status).into_response()
}

/// The registry in Prometheus' text format.
pub fn metrics_text(registry: &Registry) -> warp::reply::Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => warp::reply::with_header(
            text,
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .into_response(),
        Err(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "metrics could not be encoded",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn a_bearer_credential_is_its_scheme_in_any_case_and_a_token() {
        assert_eq!(bearer_token("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        for refused in ["Basic dXNlcg==", "Bearer", "Bearer   ", "abc.def.ghi", ""] {
            assert_eq!(bearer_token(refused), None, "{refused:?}");
        }
    }
}
