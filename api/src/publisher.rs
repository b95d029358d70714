//! Publishing input events: what the API does for every write.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use feedstream_core::event::{
    Envelope, EventBody, InputTopic, InvalidEvent, ENVELOPE_VERSION, EVENT_ID_HEADER,
};
use feedstream_core::ids::{EventId, InvalidNodeId, PostId, SnowflakeGenerator, UserId};
use feedstream_kafka::topics::Topics;
use feedstream_kafka::{self as kafka, KafkaFailure, KafkaSettings};

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Invalid(#[from] InvalidEvent),
    #[error("the Kafka broker did not acknowledge the event: {0}")]
    BrokerUnavailable(#[source] KafkaError),
    #[error("{0} events are already waiting for the broker's acknowledgement")]
    Overloaded(u32),
    #[error("the Kafka broker did not acknowledge the event within {0:?}")]
    Timeout(Duration),
}

impl PublishError {
    /// Whether the same request can succeed later (the broker may come back); invalid
    /// events never will.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, PublishError::Invalid(_))
    }
}

/// Builds envelopes with fresh ids and publishes them with acks=all.
pub struct EventPublisher {
    producer: kafka::Producer,
    topics: Topics,
    ids: SnowflakeGenerator,
    delivery_timeout: Duration,
    max_pending: u32,
}

/// Failure to set up a publisher.
#[derive(Debug, thiserror::Error)]
pub enum PublisherSetupError {
    #[error(transparent)]
    NodeId(#[from] InvalidNodeId),
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
}

impl EventPublisher {
    /// At most `max_pending` events wait for acknowledgement at once; more are refused
    /// with [`PublishError::Overloaded`], so memory stays bounded while the broker is slow.
    pub fn new(
        settings: &KafkaSettings,
        topics: Topics,
        node_id: u32,
        max_pending: u32,
    ) -> Result<Self, PublisherSetupError> {
        let producer = kafka::producer_config(settings, &format!("feedstream-api-{node_id}"))
            .set(
                "queue.buffering.max.messages",
                max_pending.max(1).to_string(),
            )
            .create_with_context(feedstream_kafka::client_log::KafkaContext)
            .map_err(KafkaFailure::Configuration)?;
        Ok(Self {
            producer,
            topics,
            ids: SnowflakeGenerator::new(node_id)?,
            delivery_timeout: settings.delivery_timeout,
            max_pending,
        })
    }

    /// A POST_CREATED whose post id is its event id.
    pub fn post_created(&self, author: UserId, content: String) -> Envelope {
        self.envelope(author, |id| EventBody::PostCreated {
            post_id: PostId::new(id.get())
                .unwrap_or_else(|_| unreachable!("event ids are valid post ids")),
            content,
        })
    }

    pub fn post_deleted(&self, author: UserId, post_id: PostId) -> Envelope {
        self.envelope(author, |_| EventBody::PostDeleted { post_id })
    }

    pub fn followed(&self, follower: UserId, followee: UserId) -> Envelope {
        self.envelope(follower, |_| EventBody::Followed {
            followee_id: followee,
        })
    }

    pub fn unfollowed(&self, follower: UserId, followee: UserId) -> Envelope {
        self.envelope(follower, |_| EventBody::Unfollowed {
            followee_id: followee,
        })
    }

    fn envelope(&self, actor: UserId, body: impl FnOnce(EventId) -> EventBody) -> Envelope {
        let (id, timestamp) = self.ids.next();
        let event_id =
            EventId::new(id).unwrap_or_else(|_| unreachable!("snowflake ids are positive 63-bit"));
        Envelope {
            event_id,
            body: body(event_id),
            actor_id: actor,
            timestamp,
            version: ENVELOPE_VERSION,
        }
    }

    /// Validates and publishes `event`; returns once the broker acknowledged it.
    pub async fn publish(&self, event: &Envelope) -> Result<(), PublishError> {
        event.validate()?;
        let topic = match event.topic() {
            InputTopic::PostEvents => &self.topics.post_events,
            InputTopic::FollowEvents => &self.topics.follow_events,
        };
        let key = event.key().to_string();
        let payload = event.to_json();
        let event_id = event.event_id.to_string();
        let record = FutureRecord::to(topic)
            .key(&key)
            .payload(&payload)
            .timestamp(event.timestamp)
            .headers(OwnedHeaders::new().insert(Header {
                key: EVENT_ID_HEADER,
                value: Some(&event_id),
            }));
        // librdkafka fails the delivery after message.timeout.ms; the outer bound only
        // guards against a wedged client.
        let bound = self.delivery_timeout + Duration::from_secs(2);
        match tokio::time::timeout(bound, self.producer.send(record, Duration::ZERO)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))) => {
                Err(PublishError::Overloaded(self.max_pending))
            }
            Ok(Err((error, _))) => Err(PublishError::BrokerUnavailable(error)),
            Err(_) => Err(PublishError::Timeout(bound)),
        }
    }

    /// Asks the broker for the input topics' metadata: the API's health check.
    pub fn check_broker(&self, timeout: Duration) -> Result<(), KafkaError> {
        use rdkafka::producer::Producer;
        self.producer
            .client()
            .fetch_metadata(Some(&self.topics.post_events), timeout)
            .map(|_| ())
    }
}
