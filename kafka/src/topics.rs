//! Topic names, their creation, and the start-up check of the co-partitioning that tasks
//! rely on.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::metadata::Metadata;

use crate::client_log::KafkaContext;
use crate::{KafkaFailure, KafkaSettings};
use feedstream_core::event::InputTopic;
use feedstream_stores::StoreName;

/// Names of every topic of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub post_events: String,
    pub follow_events: String,
    pub feed_events: String,
    pub dead_letter: String,
    /// Prefix of changelog topics and consumer groups: `<application-id>-…`.
    pub application_id: String,
}

impl Topics {
    /// The default names behind an optional prefix (which lets tests and several
    /// deployments share a broker).
    pub fn new(prefix: &str, application_id: &str) -> Self {
        Self {
            post_events: format!("{prefix}post-events"),
            follow_events: format!("{prefix}follow-events"),
            feed_events: format!("{prefix}feed-events"),
            dead_letter: format!("{prefix}dead-letter-events"),
            application_id: application_id.to_string(),
        }
    }

    /// Which input a topic is, if it is one.
    pub fn input_of(&self, topic: &str) -> Option<InputTopic> {
        [InputTopic::PostEvents, InputTopic::FollowEvents]
            .into_iter()
            .find(|input| self.input(*input) == topic)
    }

    /// The name of one of the two input topics.
    pub fn input(&self, input: InputTopic) -> &str {
        match input {
            InputTopic::PostEvents => &self.post_events,
            InputTopic::FollowEvents => &self.follow_events,
        }
    }

    pub fn changelog(&self, store: StoreName) -> String {
        format!("{}-{store}-changelog", self.application_id)
    }

    pub fn processor_group(&self) -> String {
        format!("{}-processor", self.application_id)
    }

    pub fn sink_group(&self) -> String {
        format!("{}-sink", self.application_id)
    }
}

/// How `topics create` makes topics.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// Partitions of the two inputs, and so of the changelogs (one per task).
    pub partitions: i32,
    /// Partitions of feed-events and dead-letter-events, which no task reads.
    pub output_partitions: i32,
    pub replication: i32,
    /// Topic configs of the changelogs beyond [`CHANGELOG_CONFIGS`], which they replace
    /// key by key.
    pub changelog_configs: Vec<(String, String)>,
}

/// Changelogs are compacted. Kafka only compacts closed segments, and by default a
/// segment closes after 7 days or 1 GiB: a changelog that grows slowly would be read
/// whole at every restore. One hour bounds that.
pub const CHANGELOG_CONFIGS: [(&str, &str); 2] =
    [("cleanup.policy", "compact"), ("segment.ms", "3600000")];

/// A topic layout that cannot work, or could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error("topics {missing:?} do not exist on the broker. Create them with `feedstream topics create` (same --topic-prefix and --application-id).")]
    Missing { missing: Vec<String> },
    #[error("{first} has {first_count} partitions but {second} has {second_count}. Task i joins partition i of both, so they must match. Recreate them with `feedstream topics create --partitions N` (deleting both first), or add partitions to the smaller one and rebuild state with `feedstream rebuild-state --from-source`, since keys move.")]
    PartitionMismatch {
        first: String,
        first_count: i32,
        second: String,
        second_count: i32,
    },
    #[error("--replication {wanted} needs at least {wanted} brokers, but the cluster at {brokers} has {available}")]
    Replication {
        wanted: i32,
        available: usize,
        brokers: String,
    },
    #[error("could not create topic {topic}: {code}")]
    Creation {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

impl TopicsError {
    pub fn is_retriable(&self) -> bool {
        matches!(self, TopicsError::Kafka(failure) if failure.is_retriable())
    }
}

/// The check behind every command: inputs exist and are co-partitioned, and so are the
/// changelogs when `with_changelogs`. Returns the input partition count.
pub fn check_layout(
    partition_counts: &BTreeMap<String, i32>,
    topics: &Topics,
    with_changelogs: bool,
) -> Result<i32, TopicsError> {
    let inputs = [topics.post_events.clone(), topics.follow_events.clone()];
    let mut required = inputs.to_vec();
    if with_changelogs {
        required.extend(StoreName::ALL.map(|store| topics.changelog(store)));
    }
    // The inputs are judged first: a mismatch between them is the error to report even
    // when other topics are missing too.
    for group in [&inputs[..], &required[..]] {
        let missing: Vec<String> = group
            .iter()
            .filter(|topic| !partition_counts.contains_key(*topic))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(TopicsError::Missing { missing });
        }
        let count = |topic: &String| partition_counts.get(topic).copied().unwrap_or(0);
        let expected = count(&topics.post_events);
        if let Some(other) = group.iter().find(|topic| count(topic) != expected) {
            return Err(TopicsError::PartitionMismatch {
                first: topics.post_events.clone(),
                first_count: expected,
                second: other.clone(),
                second_count: count(other),
            });
        }
    }
    Ok(partition_counts
        .get(&topics.post_events)
        .copied()
        .unwrap_or(0))
}

fn admin(settings: &KafkaSettings) -> Result<AdminClient<KafkaContext>, KafkaFailure> {
    ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .create_with_context(KafkaContext)
        .map_err(KafkaFailure::Configuration)
}

/// The cluster's metadata: its brokers and every topic.
fn cluster_metadata(settings: &KafkaSettings, timeout: Duration) -> Result<Metadata, KafkaFailure> {
    admin(settings)?
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(|source| KafkaFailure::Unreachable {
            brokers: settings.brokers.clone(),
            source,
        })
}

/// Partition counts of every topic the broker knows.
pub fn partition_counts(
    settings: &KafkaSettings,
    timeout: Duration,
) -> Result<BTreeMap<String, i32>, KafkaFailure> {
    Ok(cluster_metadata(settings, timeout)?
        .topics()
        .iter()
        .filter(|topic| topic.error().is_none())
        .map(|topic| (topic.name().to_string(), topic.partitions().len() as i32))
        .collect())
}

/// How many brokers the cluster has.
fn broker_count(settings: &KafkaSettings, timeout: Duration) -> Result<usize, KafkaFailure> {
    Ok(cluster_metadata(settings, timeout)?.brokers().len())
}

/// Fetches the layout from the broker and checks it (see [`check_layout`]).
pub fn verify_layout(
    settings: &KafkaSettings,
    topics: &Topics,
    with_changelogs: bool,
) -> Result<i32, TopicsError> {
    let counts = partition_counts(settings, Duration::from_secs(10))?;
    check_layout(&counts, topics, with_changelogs)
}

/// What `topics create` did with one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicOutcome {
    pub topic: String,
    pub partitions: i32,
    pub created: bool,
}

/// Creates every topic that is missing; existing ones are left as they are. Then checks
/// the layout, so a pre-existing mismatch is reported rather than hidden.
pub async fn create_topics(
    settings: &KafkaSettings,
    topics: &Topics,
    spec: TopicSpec,
) -> Result<Vec<TopicOutcome>, TopicsError> {
    // Inputs are the source of truth for rebuilds: keep them forever (-1).
    let keep_forever = vec![("cleanup.policy", "delete"), ("retention.ms", "-1")];
    let mut wanted = vec![
        WantedTopic::new(&topics.post_events, spec.partitions, keep_forever.clone()),
        WantedTopic::new(&topics.follow_events, spec.partitions, keep_forever),
        WantedTopic::new(
            &topics.feed_events,
            spec.output_partitions,
            vec![("cleanup.policy", "delete")],
        ),
        WantedTopic::new(
            &topics.dead_letter,
            spec.output_partitions,
            vec![("cleanup.policy", "delete")],
        ),
    ];
    let mut changelog_configs: BTreeMap<String, String> = CHANGELOG_CONFIGS
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    changelog_configs.extend(spec.changelog_configs.iter().cloned());
    for store in StoreName::ALL {
        wanted.push(WantedTopic {
            name: topics.changelog(store),
            partitions: spec.partitions,
            configs: changelog_configs.clone().into_iter().collect(),
        });
    }

    let available = broker_count(settings, Duration::from_secs(10))?;
    if usize::try_from(spec.replication).unwrap_or(0) > available {
        return Err(TopicsError::Replication {
            wanted: spec.replication,
            available,
            brokers: settings.brokers.clone(),
        });
    }
    let existing = partition_counts(settings, Duration::from_secs(10))?;
    let to_create: Vec<NewTopic<'_>> = wanted
        .iter()
        .filter(|topic| !existing.contains_key(&topic.name))
        .map(|topic| {
            topic.configs.iter().fold(
                NewTopic::new(
                    &topic.name,
                    topic.partitions,
                    TopicReplication::Fixed(spec.replication),
                ),
                |new_topic, (key, value)| new_topic.set(key, value),
            )
        })
        .collect();
    if !to_create.is_empty() {
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin(settings)?
            .create_topics(to_create.iter(), &options)
            .await
            .map_err(KafkaFailure::Operation)?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(TopicsError::Creation { topic, code }),
            }
        }
    }

    let counts = wait_for_topics(settings, wanted.iter().map(|topic| topic.name.as_str())).await?;
    check_layout(&counts, topics, true)?;
    Ok(wanted
        .into_iter()
        .map(|topic| TopicOutcome {
            partitions: counts.get(&topic.name).copied().unwrap_or(0),
            created: !existing.contains_key(&topic.name),
            topic: topic.name,
        })
        .collect())
}

/// A topic `topics create` makes when it is missing.
struct WantedTopic {
    name: String,
    partitions: i32,
    configs: Vec<(String, String)>,
}

impl WantedTopic {
    fn new(name: &str, partitions: i32, configs: Vec<(&str, &str)>) -> Self {
        Self {
            name: name.to_string(),
            partitions,
            configs: configs
                .into_iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
        }
    }
}

/// Metadata can lag behind a creation; poll until every topic is visible.
async fn wait_for_topics<'a>(
    settings: &KafkaSettings,
    names: impl Iterator<Item = &'a str> + Clone,
) -> Result<BTreeMap<String, i32>, KafkaFailure> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let counts = partition_counts(settings, Duration::from_secs(10))?;
        if names
            .clone()
            .all(|name| counts.get(name).is_some_and(|count| *count > 0))
            || tokio::time::Instant::now() > deadline
        {
            return Ok(counts);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(entries: &[(&str, i32)]) -> BTreeMap<String, i32> {
        entries
            .iter()
            .map(|(name, count)| (name.to_string(), *count))
            .collect()
    }

    #[test]
    fn refuses_inputs_with_different_partition_counts() {
        let topics = Topics::new("", "app");
        let error = check_layout(
            &counts(&[("post-events", 6), ("follow-events", 3)]),
            &topics,
            false,
        )
        .unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("post-events has 6 partitions but follow-events has 3"),
            "{message}"
        );
        assert!(
            message.contains("feedstream topics create --partitions"),
            "{message}"
        );
    }

    #[test]
    fn an_input_mismatch_is_reported_before_missing_changelogs() {
        let topics = Topics::new("", "app");
        let error = check_layout(
            &counts(&[("post-events", 2), ("follow-events", 3)]),
            &topics,
            true,
        )
        .unwrap_err();
        assert!(
            matches!(error, TopicsError::PartitionMismatch { .. }),
            "{error}"
        );
    }

    #[test]
    fn names_missing_topics_and_the_fix() {
        let topics = Topics::new("t-", "app");
        let error = check_layout(
            &counts(&[("t-post-events", 6), ("t-follow-events", 6)]),
            &topics,
            true,
        )
        .unwrap_err();
        assert!(
            matches!(&error, TopicsError::Missing { missing } if missing == &["app-followers-changelog", "app-author-posts-changelog"])
        );
        assert!(error.to_string().contains("feedstream topics create"));
    }

    #[test]
    fn accepts_a_co_partitioned_layout() {
        let topics = Topics::new("", "app");
        let layout = counts(&[
            ("post-events", 4),
            ("follow-events", 4),
            ("app-followers-changelog", 4),
            ("app-author-posts-changelog", 4),
        ]);
        assert_eq!(check_layout(&layout, &topics, true).unwrap(), 4);
        let mut wrong_changelog = layout.clone();
        wrong_changelog.insert("app-followers-changelog".into(), 2);
        assert!(matches!(
            check_layout(&wrong_changelog, &topics, true),
            Err(TopicsError::PartitionMismatch { .. })
        ));
    }
}
