//! Intake: records go to their task's buffer for its input, membership changes open and
//! close tasks, and full buffers pause their partitions.

use feedstream_core::event::InputTopic;
use feedstream_kafka::{GroupConsumer, InputRecord, MembershipChange};

use super::task::Task;
use super::{ProcessorError, Runtime};

impl Runtime<'_> {
    pub(super) fn route(&mut self, record: InputRecord) {
        let Some(task) = self.tasks.get_mut(&record.partition) else {
            // One input partition is assigned before its twin: keep its records for the
            // task (the fetch goes on after them, so dropping one would skip it).
            self.incomplete
                .entry(record.partition)
                .or_default()
                .push(record);
            return;
        };
        match self.settings.topics.input_of(&record.topic) {
            Some(InputTopic::PostEvents) => task.posts.push_back(record),
            Some(InputTopic::FollowEvents) => task.follows.push_back(record),
            // The consumer subscribes to the two inputs only.
            None => {
                tracing::error!(source = %record.source(), "record of a topic that is no input")
            }
        }
    }

    pub(super) fn apply_membership(
        &mut self,
        change: MembershipChange,
    ) -> Result<(), ProcessorError> {
        match change {
            MembershipChange::Revoked(partitions) => {
                for (topic, partition) in partitions {
                    if let Some(records) = self.incomplete.get_mut(&partition) {
                        records.retain(|record| record.topic != topic);
                    }
                    self.paused.remove(&(topic.clone(), partition));
                    self.assigned.remove(&(topic, partition));
                    if let Some(task) = self.tasks.remove(&partition) {
                        // Nothing is in flight between batches: buffered records are
                        // simply dropped (uncommitted, the next owner reads them).
                        task.close().map_err(|source| ProcessorError::State {
                            task: partition,
                            source,
                        })?;
                        tracing::info!(task = partition, "task revoked and closed");
                    }
                }
            }
            MembershipChange::Assigned(partitions) => {
                self.assigned.extend(partitions);
                let topics = &self.settings.topics;
                let complete: Vec<i32> = self
                    .assigned
                    .iter()
                    .filter(|(topic, _)| topics.input_of(topic) == Some(InputTopic::PostEvents))
                    .map(|(_, partition)| *partition)
                    .filter(|partition| {
                        self.assigned
                            .contains(&(topics.follow_events.clone(), *partition))
                    })
                    .filter(|partition| !self.tasks.contains_key(partition))
                    .collect();
                for partition in complete {
                    let task =
                        Task::open(self.settings, partition, &self.metrics).map_err(|source| {
                            ProcessorError::State {
                                task: partition,
                                source,
                            }
                        })?;
                    self.tasks.insert(partition, task);
                    self.metrics.tasks_opened.inc();
                    tracing::info!(task = partition, "task assigned and opened");
                    for record in self.incomplete.remove(&partition).unwrap_or_default() {
                        self.route(record);
                    }
                }
            }
        }
        self.metrics.active_tasks.set(self.tasks.len() as i64);
        Ok(())
    }

    /// Pauses input partitions whose task buffer is full, resumes drained ones.
    pub(super) fn apply_backpressure(
        &mut self,
        consumer: &GroupConsumer,
    ) -> Result<(), ProcessorError> {
        let topics = &self.settings.topics;
        let limit = self.settings.buffered_records_per_partition;
        let mut pause = Vec::new();
        let mut resume = Vec::new();
        for (partition, task) in &self.tasks {
            let buffers = [
                (&topics.post_events, task.posts.len()),
                (&topics.follow_events, task.follows.len()),
            ];
            for (topic, buffered) in buffers {
                let key = (topic.clone(), *partition);
                let paused = self.paused.contains(&key);
                if buffered >= limit && !paused {
                    pause.push(key);
                } else if buffered < limit / 2 && paused {
                    resume.push(key);
                }
            }
        }
        if !pause.is_empty() {
            consumer.set_paused(&pause, true)?;
            self.paused.extend(pause);
        }
        if !resume.is_empty() {
            consumer.set_paused(&resume, false)?;
            for key in &resume {
                self.paused.remove(key);
            }
        }
        self.metrics.paused_partitions.set(self.paused.len() as i64);
        Ok(())
    }
}
