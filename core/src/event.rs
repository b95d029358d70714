//! The public event envelope on `post-events` and `follow-events`, and the feed changes
//! on `feed-events`. Both are JSON contracts read by other teams' consumers: fields are
//! only ever added, and `version` changes when a field's meaning does.

use serde::{Deserialize, Serialize};

use crate::ids::{EventId, PostId, UserId};

/// Version of the envelope layout written by this build; decoding refuses newer ones.
pub const ENVELOPE_VERSION: u32 = 1;
/// Version of the feed-change layout written by this build.
pub const FEED_EVENT_VERSION: u32 = 1;
/// Longest post, in Unicode scalar values.
pub const MAX_CONTENT_CHARS: usize = 500;
/// Kafka header carrying the event id: the correlation id of every derived record and log line.
pub const EVENT_ID_HEADER: &str = "event_id";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub event_id: EventId,
    #[serde(flatten)]
    pub body: EventBody,
    pub actor_id: UserId,
    /// Unix milliseconds; the millisecond encoded in `event_id`.
    pub timestamp: i64,
    pub version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventBody {
    PostCreated { post_id: PostId, content: String },
    PostDeleted { post_id: PostId },
    Followed { followee_id: UserId },
    Unfollowed { followee_id: UserId },
}

/// The two input topics of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InputTopic {
    PostEvents,
    FollowEvents,
}

/// Why an event cannot be accepted. From the API this is a 400; in the processor the
/// record goes to the dead-letter topic with [`InvalidEvent::code`] as its reason and this
/// text as the detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("not a valid event envelope: {0}")]
    Undecodable(String),
    #[error("unknown event type: {0}")]
    UnknownType(String),
    #[error("envelope version {0} is newer than this build understands ({ENVELOPE_VERSION})")]
    UnsupportedVersion(u32),
    #[error("content must not be empty or only white space")]
    EmptyContent,
    #[error("content is {0} characters long; the limit is {MAX_CONTENT_CHARS}")]
    ContentTooLong(usize),
    #[error("content must not contain the NUL character (U+0000)")]
    NulInContent,
    #[error("a user cannot follow or unfollow themselves")]
    SelfFollow,
    #[error("post_id {post_id} must equal the event_id {event_id} of the event that creates it")]
    PostIdMismatch { post_id: PostId, event_id: EventId },
    #[error("{kind} event belongs on {expected:?}, found on {found:?}")]
    WrongTopic {
        kind: &'static str,
        expected: InputTopic,
        found: InputTopic,
    },
    #[error("record key {found:?} does not match the event's partitioning key {expected}")]
    WrongKey { expected: UserId, found: String },
}

impl InvalidEvent {
    /// A stable, short name of the rule broken: the dead-letter reason, a metric label
    /// and what operators filter dead letters by.
    pub fn code(&self) -> &'static str {
        match self {
            InvalidEvent::Undecodable(_) => "undecodable",
            InvalidEvent::UnknownType(_) => "unknown_type",
            InvalidEvent::UnsupportedVersion(_) => "unsupported_version",
            InvalidEvent::EmptyContent => "empty_content",
            InvalidEvent::ContentTooLong(_) => "content_too_long",
            InvalidEvent::NulInContent => "nul_in_content",
            InvalidEvent::SelfFollow => "self_follow",
            InvalidEvent::PostIdMismatch { .. } => "post_id_mismatch",
            InvalidEvent::WrongTopic { .. } => "wrong_topic",
            InvalidEvent::WrongKey { .. } => "wrong_key",
        }
    }
}

impl Envelope {
    /// Checks the rules every event obeys, wherever it comes from.
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        if self.version > ENVELOPE_VERSION {
            return Err(InvalidEvent::UnsupportedVersion(self.version));
        }
        match &self.body {
            EventBody::PostCreated { post_id, content } => {
                if post_id.get() != self.event_id.get() {
                    return Err(InvalidEvent::PostIdMismatch {
                        post_id: *post_id,
                        event_id: self.event_id,
                    });
                }
                validate_content(content)
            }
            EventBody::PostDeleted { .. } => Ok(()),
            EventBody::Followed { followee_id } | EventBody::Unfollowed { followee_id } => {
                if *followee_id == self.actor_id {
                    Err(InvalidEvent::SelfFollow)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The topic the event is published to.
    pub fn topic(&self) -> InputTopic {
        match self.body {
            EventBody::PostCreated { .. } | EventBody::PostDeleted { .. } => InputTopic::PostEvents,
            EventBody::Followed { .. } | EventBody::Unfollowed { .. } => InputTopic::FollowEvents,
        }
    }

    /// The record key: the author for posts, the followee for follows, so that everything
    /// about one author lands in one task.
    pub fn key(&self) -> UserId {
        match self.body {
            EventBody::PostCreated { .. } | EventBody::PostDeleted { .. } => self.actor_id,
            EventBody::Followed { followee_id } | EventBody::Unfollowed { followee_id } => {
                followee_id
            }
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self.body {
            EventBody::PostCreated { .. } => "POST_CREATED",
            EventBody::PostDeleted { .. } => "POST_DELETED",
            EventBody::Followed { .. } => "FOLLOWED",
            EventBody::Unfollowed { .. } => "UNFOLLOWED",
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self)
            .unwrap_or_else(|error| unreachable!("an envelope always serializes to JSON: {error}"))
    }

    /// Decodes and validates a record read from `found_on` with record key `key`.
    pub fn decode(
        payload: &[u8],
        key: Option<&[u8]>,
        found_on: InputTopic,
    ) -> Result<Self, InvalidEvent> {
        let envelope: Envelope = serde_json::from_slice(payload).map_err(|error| {
            let text = error.to_string();
            // serde's word for a `type` this build does not know (a newer producer's).
            if text.starts_with("unknown variant") {
                InvalidEvent::UnknownType(text)
            } else {
                InvalidEvent::Undecodable(text)
            }
        })?;
        envelope.validate()?;
        if envelope.topic() != found_on {
            return Err(InvalidEvent::WrongTopic {
                kind: envelope.type_name(),
                expected: envelope.topic(),
                found: found_on,
            });
        }
        let expected = envelope.key();
        let key_text = key.map(String::from_utf8_lossy).unwrap_or_default();
        if key_text != expected.to_string() {
            return Err(InvalidEvent::WrongKey {
                expected,
                found: key_text.into_owned(),
            });
        }
        Ok(envelope)
    }
}

/// Post content rules: not blank, at most [`MAX_CONTENT_CHARS`] characters, no NUL
/// (PostgreSQL text cannot hold it, so such a post could never be stored).
pub fn validate_content(content: &str) -> Result<(), InvalidEvent> {
    if content.trim().is_empty() {
        return Err(InvalidEvent::EmptyContent);
    }
    if content.contains('\0') {
        return Err(InvalidEvent::NulInContent);
    }
    let length = content.chars().count();
    if length > MAX_CONTENT_CHARS {
        return Err(InvalidEvent::ContentTooLong(length));
    }
    Ok(())
}

/// One change to feeds: the value of a `feed-events` record, keyed by
/// [`FeedChange::key`]. Applying the same change twice has the effect of applying it once.
/// The schema is `core/schema/feed-event.schema.json`.
///
/// A user's feed is the union of the entries added to it (fan-out on write) and, for
/// every author the user follows, that author's posts merged on read at or above the
/// follow's `min_post_id`; deleted posts are in no feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FeedChange {
    /// `post_id` (by `author_id`) is in `feed_owner_id`'s feed.
    EntryAdded {
        feed_owner_id: UserId,
        post_id: PostId,
        author_id: UserId,
    },
    /// `post_id` (by `author_id`) was deleted: it leaves `feed_owner_id`'s feed.
    EntryRemoved {
        feed_owner_id: UserId,
        post_id: PostId,
        author_id: UserId,
    },
    /// No post of `author_id` is in `feed_owner_id`'s feed any more (an unfollow).
    AuthorRemoved {
        feed_owner_id: UserId,
        author_id: UserId,
    },
    /// `feed_owner_id` follows `author_id`: the author's live posts with ids at or above
    /// `min_post_id` (all of them when null) belong in the feed. Those fanned out arrive
    /// as entries; those merged on read are found through this record.
    FollowStarted {
        feed_owner_id: UserId,
        author_id: UserId,
        min_post_id: Option<PostId>,
    },
    /// `post_id` was not fanned out (its author had more followers than the celebrity
    /// threshold): every follower sees it at read time. Keyed by `author_id`.
    PostMergedOnRead { author_id: UserId, post_id: PostId },
}

impl FeedChange {
    /// The record key: the user whose feed changes, or the author for a post merged on read.
    pub fn key(&self) -> UserId {
        match self {
            FeedChange::EntryAdded { feed_owner_id, .. }
            | FeedChange::EntryRemoved { feed_owner_id, .. }
            | FeedChange::AuthorRemoved { feed_owner_id, .. }
            | FeedChange::FollowStarted { feed_owner_id, .. } => *feed_owner_id,
            FeedChange::PostMergedOnRead { author_id, .. } => *author_id,
        }
    }
}

/// A `feed-events` record value: the change plus where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEvent {
    #[serde(flatten)]
    pub change: FeedChange,
    /// The input event this change derives from.
    pub cause_event_id: EventId,
    /// The cause's timestamp (Unix milliseconds).
    pub timestamp: i64,
    pub version: u32,
}

impl FeedEvent {
    /// Appends the record value to `json`: a buffer kept from record to record
    /// allocates nothing once it has grown to the longest change (about 200 bytes).
    pub fn write_json(&self, json: &mut Vec<u8>) {
        serde_json::to_writer(json, self)
            .unwrap_or_else(|error| unreachable!("a feed event always serializes: {error}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: u64) -> UserId {
        UserId::new(id).unwrap()
    }

    fn post_created() -> Envelope {
        Envelope {
            event_id: EventId::new(10).unwrap(),
            body: EventBody::PostCreated {
                post_id: PostId::new(10).unwrap(),
                content: "hello".into(),
            },
            actor_id: user(1),
            timestamp: 1_700_000_000_000,
            version: ENVELOPE_VERSION,
        }
    }

    #[test]
    fn envelope_json_is_the_documented_contract() {
        let json: serde_json::Value = serde_json::from_slice(&post_created().to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "event_id": "10", "type": "POST_CREATED", "actor_id": "1",
                "payload": {"post_id": "10", "content": "hello"},
                "timestamp": 1_700_000_000_000i64, "version": 1
            })
        );
        let envelope = post_created();
        assert_eq!(
            Envelope::decode(&envelope.to_json(), Some(b"1"), InputTopic::PostEvents).unwrap(),
            envelope
        );
    }

    #[test]
    fn feed_event_json_is_the_documented_contract() {
        let event = FeedEvent {
            change: FeedChange::AuthorRemoved {
                feed_owner_id: user(2),
                author_id: user(1),
            },
            cause_event_id: EventId::new(5).unwrap(),
            timestamp: 9,
            version: FEED_EVENT_VERSION,
        };
        let mut written = Vec::new();
        event.write_json(&mut written);
        let json: serde_json::Value = serde_json::from_slice(&written).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "AUTHOR_REMOVED", "feed_owner_id": "2", "author_id": "1",
                               "cause_event_id": "5", "timestamp": 9, "version": 1})
        );
        assert_eq!(serde_json::from_value::<FeedEvent>(json).unwrap(), event);
    }

    /// The published schema's examples are what this build writes and reads, and the
    /// schema lists exactly the change types there are.
    #[test]
    fn the_published_schema_matches_the_code() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../schema/feed-event.schema.json")).unwrap();
        let examples = schema["examples"].as_array().unwrap();
        let mut types = std::collections::BTreeSet::new();
        // One buffer for all, as the processor writes them.
        let mut json = Vec::new();
        for example in examples {
            let event: FeedEvent = serde_json::from_value(example.clone()).unwrap();
            json.clear();
            event.write_json(&mut json);
            let written: serde_json::Value = serde_json::from_slice(&json).unwrap();
            assert_eq!(&written, example);
            types.insert(example["type"].as_str().unwrap().to_string());
        }
        let listed: std::collections::BTreeSet<String> = schema["properties"]["type"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        assert_eq!(types, listed, "every type has an example");
    }

    #[test]
    fn decode_refuses_what_the_processor_must_dead_letter() {
        let envelope = post_created();
        let bytes = envelope.to_json();
        let refused = |payload: &[u8], key: Option<&[u8]>, topic| {
            Envelope::decode(payload, key, topic).unwrap_err()
        };
        assert!(matches!(
            refused(b"{not json", Some(b"1"), InputTopic::PostEvents),
            InvalidEvent::Undecodable(_)
        ));
        let unknown = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("POST_CREATED", "POST_EDITED");
        let unknown = refused(unknown.as_bytes(), Some(b"1"), InputTopic::PostEvents);
        assert_eq!(unknown.code(), "unknown_type", "{unknown}");
        assert!(matches!(
            refused(&bytes, Some(b"2"), InputTopic::PostEvents),
            InvalidEvent::WrongKey { .. }
        ));
        assert!(matches!(
            refused(&bytes, None, InputTopic::PostEvents),
            InvalidEvent::WrongKey { .. }
        ));
        assert!(matches!(
            refused(&bytes, Some(b"1"), InputTopic::FollowEvents),
            InvalidEvent::WrongTopic { .. }
        ));

        let mut newer = envelope.clone();
        newer.version = ENVELOPE_VERSION + 1;
        assert_eq!(
            newer.validate(),
            Err(InvalidEvent::UnsupportedVersion(ENVELOPE_VERSION + 1))
        );

        let self_follow = Envelope {
            body: EventBody::Followed {
                followee_id: user(1),
            },
            ..envelope
        };
        assert_eq!(self_follow.validate(), Err(InvalidEvent::SelfFollow));
    }

    #[test]
    fn content_rules() {
        assert_eq!(validate_content(" \n\t"), Err(InvalidEvent::EmptyContent));
        assert_eq!(validate_content("a\0b"), Err(InvalidEvent::NulInContent));
        assert!(validate_content(&"é".repeat(MAX_CONTENT_CHARS)).is_ok());
        assert_eq!(
            validate_content(&"é".repeat(MAX_CONTENT_CHARS + 1)),
            Err(InvalidEvent::ContentTooLong(MAX_CONTENT_CHARS + 1))
        );
    }
}
