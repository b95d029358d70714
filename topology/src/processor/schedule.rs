//! Which records the tasks process next: one batch, one record per task in turn, each
//! task's inputs merged by stream time, waiting for an input the broker still holds
//! records of.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use feedstream_core::event::InputTopic;
use feedstream_core::stream_time::{self, EmptyInput, Next};
use feedstream_kafka::{GroupConsumer, InputRecord};

use super::records::{changelog_records, process_record, Effects};
use super::task::{stream_time, Waiting};
use super::{ProcessorError, Runtime};

/// How long a task waits for a lagging input before the wait is logged (and again
/// when it ends). Shorter waits are normal while two partitions are fetched in turn;
/// they are counted by `processor_input_wait_seconds` only.
const WAIT_LOGGED_AFTER: Duration = Duration::from_secs(2);

impl Runtime<'_> {
    /// Applies up to one batch of records that stream time allows, one record per task
    /// in turn, so that no task starves the others and a crash replays at most one batch.
    pub(super) fn process_ready(
        &mut self,
        consumer: &GroupConsumer,
    ) -> Result<Effects, ProcessorError> {
        let mut effects = Effects::new(self.outputs.clone(), std::mem::take(&mut self.spare));
        let mut partitions: Vec<i32> = self.tasks.keys().copied().collect();
        if !partitions.is_empty() {
            let first = self.next_first % partitions.len();
            partitions.rotate_left(first);
            self.next_first = self.next_first.wrapping_add(1);
        }
        let mut verdicts = BTreeMap::new();
        let mut budget = self.settings.max_batch_records;
        while budget > 0 && !partitions.is_empty() {
            let mut still_ready = Vec::new();
            for partition in partitions {
                if budget == 0 {
                    break;
                }
                let record = self.next_record(consumer, partition, &mut verdicts);
                let (Some((input, record)), Some(task)) = (record, self.tasks.get_mut(&partition))
                else {
                    continue;
                };
                budget -= 1;
                process_record(
                    self.settings,
                    &self.metrics,
                    task,
                    input,
                    record,
                    &mut effects,
                )
                .map_err(|source| ProcessorError::Store {
                    task: partition,
                    source,
                })?;
                still_ready.push(partition);
            }
            partitions = still_ready;
        }
        for (partition, timestamp) in std::mem::take(&mut effects.written) {
            if let Some(task) = self.tasks.get_mut(&partition) {
                changelog_records(task, timestamp, &mut effects).map_err(|source| {
                    ProcessorError::Store {
                        task: partition,
                        source,
                    }
                })?;
            }
        }
        self.metrics.waiting_tasks.set(self.lagging_tasks());
        Ok(effects)
    }

    /// The task's next record in stream time, if it may be processed now. Whether an
    /// empty input is caught up is asked of the broker once per cycle and topic, for
    /// every task at once: the consumer is not polled meanwhile, so `verdicts` (keyed
    /// by task and input) keeps the answers for the rest of the cycle.
    pub(super) fn next_record(
        &mut self,
        consumer: &GroupConsumer,
        partition: i32,
        verdicts: &mut BTreeMap<(i32, InputTopic), bool>,
    ) -> Option<(InputTopic, InputRecord)> {
        let task = self.tasks.get(&partition)?;
        let posts_head = task.posts.front().map(stream_time);
        let follows_head = task.follows.front().map(stream_time);
        let empty = if posts_head.is_some() == follows_head.is_some() {
            // Both heads or neither: the decision needs no broker.
            EmptyInput::Lagging
        } else {
            let input = if posts_head.is_none() {
                InputTopic::PostEvents
            } else {
                InputTopic::FollowEvents
            };
            if !verdicts.contains_key(&(partition, input)) {
                let topic = self.settings.topics.input(input);
                let answers = self.caught_up(consumer, topic);
                for other in self.tasks.keys() {
                    let verdict = answers.get(other).copied().unwrap_or(false);
                    verdicts.insert((*other, input), verdict);
                }
            }
            let caught_up = verdicts.get(&(partition, input)).copied().unwrap_or(false);
            let task = self.tasks.get_mut(&partition)?;
            let waiting = task.waiting.get_or_insert_with(|| Waiting {
                input,
                since: Instant::now(),
                caught_up_since: None,
                logged: false,
            });
            if caught_up {
                let since = *waiting.caught_up_since.get_or_insert_with(Instant::now);
                EmptyInput::CaughtUp {
                    for_: since.elapsed(),
                }
            } else {
                waiting.caught_up_since = None;
                EmptyInput::Lagging
            }
        };
        let max_idle = self.settings.max_task_idle;
        let decision = stream_time::next(posts_head, follows_head, empty, max_idle);
        let task = self.tasks.get_mut(&partition)?;
        let record = match decision {
            Next::Posts => task.posts.pop_front().map(|r| (InputTopic::PostEvents, r)),
            Next::Follows => task
                .follows
                .pop_front()
                .map(|r| (InputTopic::FollowEvents, r)),
            Next::Wait | Next::Idle => None,
        };
        if decision == Next::Wait {
            if let Some(waiting) = task.waiting.as_mut().filter(|waiting| !waiting.logged) {
                if waiting.since.elapsed() >= WAIT_LOGGED_AFTER {
                    waiting.logged = true;
                    tracing::info!(
                        task = partition,
                        input = ?waiting.input,
                        caught_up = waiting.caught_up_since.is_some(),
                        "task waits for its other input before processing further"
                    );
                }
            }
        } else if let Some(waiting) = task.waiting.take() {
            let waited = waiting.since.elapsed().as_secs_f64();
            self.metrics.input_wait_seconds.observe(waited);
            if waiting.logged {
                tracing::info!(
                    task = partition,
                    input = ?waiting.input,
                    seconds = waited,
                    "task resumed after waiting for its other input"
                );
            }
        }
        record
    }

    /// Tasks whose one input is empty while the broker still holds records of it.
    pub(super) fn lagging_tasks(&self) -> i64 {
        self.tasks
            .values()
            .filter(|task| {
                task.waiting
                    .as_ref()
                    .is_some_and(|waiting| waiting.caught_up_since.is_none())
            })
            .count() as i64
    }

    /// Which tasks have read all of `topic`; none, when the broker does not say.
    pub(super) fn caught_up(&self, consumer: &GroupConsumer, topic: &str) -> BTreeMap<i32, bool> {
        let partitions: Vec<i32> = self.tasks.keys().copied().collect();
        consumer
            .caught_up(topic, &partitions, Duration::from_secs(1))
            .unwrap_or_else(|error| {
                tracing::debug!(%error, topic, "lag unknown; treating the inputs as lagging");
                BTreeMap::new()
            })
    }
}
