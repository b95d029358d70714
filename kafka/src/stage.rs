//! The one loop of every Kafka stage (the processor and the sink): read a batch, hand
//! its records and membership changes to the stage, let the stage make its work durable,
//! commit the input offsets, then let the stage finish (checkpoints, metrics).
//!
//! The commit protocol is written here only: offsets are committed after the stage's
//! outputs are durable, never before; a commit that fails is kept by the consumer and
//! retried with the next one, so it is never final while the partitions stay assigned.
//! The consumer is only polled between cycles, so a rebalance never finds work in
//! flight.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Instant;

use tokio::sync::watch;

use crate::{Batch, GroupConsumer, Intake, KafkaFailure, StageMetrics, TopicPartition};

/// Work a stage made durable: the input offsets it may commit (next offset to read, per
/// partition) and what it needs once they are committed.
pub struct Durable<D> {
    pub offsets: BTreeMap<TopicPartition, i64>,
    pub done: D,
}

/// One stage of the topology, driven by [`drive`].
pub trait Stage {
    /// The `stage` label of its metrics.
    const NAME: &'static str;
    type Error: From<KafkaFailure>;
    /// What [`Stage::after_commit`] needs of a durable cycle.
    type Done;

    /// What the next read may take.
    fn intake(&self) -> Intake;

    /// Takes what one read gave: records, all read before the membership changes that
    /// follow them in the batch.
    fn take(&mut self, consumer: &GroupConsumer, batch: Batch) -> Result<(), Self::Error>;

    /// Does the work the stage has in hand and makes it durable (stores, output topics,
    /// databases), retrying transient failures until shutdown. `None`: nothing to
    /// commit this cycle.
    fn make_durable(
        &mut self,
        consumer: &GroupConsumer,
        shutdown: &watch::Receiver<bool>,
    ) -> impl Future<Output = Result<Option<Durable<Self::Done>>, Self::Error>> + Send;

    /// Runs once the cycle's offsets were committed (or their commit deferred).
    fn after_commit(&mut self, done: Self::Done) -> Result<(), Self::Error>;
}

/// Runs `stage` on `consumer` until `shutdown` turns true; the cycle in hand is
/// finished first. The time of each step goes to `stage_cycle_seconds`, so that an
/// operator sees whether a stage waits for input, works, or waits for a commit.
pub async fn drive<S: Stage>(
    stage: &mut S,
    consumer: &mut GroupConsumer,
    metrics: &StageMetrics,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), S::Error> {
    let spent = |step: &'static str, since: Instant| {
        metrics.spent(S::NAME, step, since.elapsed());
        Instant::now()
    };
    while !*shutdown.borrow() {
        let started = Instant::now();
        let batch = consumer.next_batch(stage.intake(), shutdown).await?;
        let read = spent("read", started);
        stage.take(consumer, batch)?;
        let durable = stage.make_durable(consumer, shutdown).await?;
        let worked = spent("work", read);
        let Some(durable) = durable else {
            continue;
        };
        if let Err(error) = consumer.commit(&durable.offsets) {
            metrics.retried("kafka");
            tracing::warn!(%error, "offset commit failed; it is retried with the next one");
        }
        let committed = spent("commit", worked);
        stage.after_commit(durable.done)?;
        spent("finish", committed);
    }
    Ok(())
}
