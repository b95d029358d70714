//! Kafka plumbing shared by the API, the processor and the sink: client settings and
//! logging, the topic layout and its checks, a group consumer that cuts batches at
//! membership changes, a producer that delivers whole batches, a reader of one
//! partition, and dead letters. No feed logic lives here.

pub mod client_log;
pub mod dead_letter;
mod failure;
mod group_consumer;
mod membership;
pub mod metrics;
mod outbox;
mod partition_reader;
mod record;
pub mod retry;
mod settings;
pub mod stage;
pub mod topics;
pub mod transaction;

pub use failure::KafkaFailure;
pub use group_consumer::{Batch, GroupConsumer, Intake, MemberIdentity};
pub use membership::MembershipChange;
pub use metrics::StageMetrics;
pub use outbox::{Acknowledged, BatchProducer, TallyContext};
pub use partition_reader::{read_partition, read_span, whole_partition, Span};
pub use record::{InputRecord, OutboundRecord, TopicPartition};
pub use retry::{retry_transient, Retriable, Retry};
pub use settings::{
    batch_producer, producer, producer_config, standalone_consumer, KafkaSettings, Producer,
    Reader, DEFAULT_FETCH_WAIT,
};
pub use transaction::ProcessingGuarantee;
