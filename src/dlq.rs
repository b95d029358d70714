//! `feedstream dlq`: what operators do with dead letters.

use anyhow::{bail, Context};
use chrono::{DateTime, TimeZone, Utc};
use feedstream_kafka::dead_letter::{
    read_dead_letters, replay, DeadLetterFilter, StoredDeadLetter,
};
use feedstream_kafka::topics::Topics;
use feedstream_kafka::{self as kafka, KafkaSettings};
use tokio::sync::watch;

use crate::cli::{DlqCommand, DlqFilterArgs};

pub async fn run(
    settings: &KafkaSettings,
    topics: &Topics,
    command: DlqCommand,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let read = || {
        tokio::task::block_in_place(|| read_dead_letters(settings, topics)).with_context(|| {
            format!(
                "reading {} from the Kafka broker at {}",
                topics.dead_letter, settings.brokers
            )
        })
    };
    match command {
        DlqCommand::List { filter, json } => {
            let filter = parse_filter(&filter)?;
            let letters = read()?;
            let total = letters.len();
            let mut shown = 0;
            for letter in letters.iter().filter(|l| filter.matches(&l.headers)) {
                shown += 1;
                if json {
                    println!("{}", as_json(letter));
                } else {
                    println!("{}", as_line(letter));
                }
            }
            eprintln!("{shown} of {total} dead letters match");
            Ok(())
        }
        DlqCommand::Replay { filter, dry_run } => {
            let filter = parse_filter(&filter)?;
            let letters = read()?;
            let selected: Vec<&StoredDeadLetter> = letters
                .iter()
                .filter(|l| filter.matches(&l.headers))
                .collect();
            let (done, pending): (Vec<_>, Vec<_>) = selected.iter().partition(|l| l.replayed);
            eprintln!(
                "{} dead letters match: {} to replay, {} replayed before (skipped)",
                selected.len(),
                pending.len(),
                done.len()
            );
            if dry_run {
                for letter in pending {
                    println!("would replay {}", as_line(letter));
                }
                return Ok(());
            }
            let producer =
                kafka::batch_producer(settings, &format!("{}-dlq", topics.application_id))?;
            let mut replayed = 0;
            for letter in pending {
                if *shutdown.borrow() {
                    eprintln!("stopped by a signal; run the same command again to go on");
                    break;
                }
                replay(&producer, topics, letter)
                    .await
                    .with_context(|| format!("replaying {}", letter.position()))?;
                println!("replayed {}", as_line(letter));
                replayed += 1;
            }
            eprintln!("{replayed} dead letters published again to their source topics");
            Ok(())
        }
    }
}

fn parse_filter(args: &DlqFilterArgs) -> anyhow::Result<DeadLetterFilter> {
    Ok(DeadLetterFilter {
        reason: args.reason.clone(),
        source_topic: args.source_topic.clone(),
        since_ms: args.since.as_deref().map(parse_time).transpose()?,
        until_ms: args.until.as_deref().map(parse_time).transpose()?,
    })
}

/// RFC 3339 (`2026-11-21T10:00:00Z`) or Unix milliseconds.
fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    match DateTime::parse_from_rfc3339(text) {
        Ok(time) => Ok(time.timestamp_millis()),
        Err(error) => {
            bail!("{text:?} is not a time: use RFC 3339 (2026-11-21T10:00:00Z) or Unix milliseconds ({error})")
        }
    }
}

fn time(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

fn as_line(letter: &StoredDeadLetter) -> String {
    let h = &letter.headers;
    format!(
        "{position:<10} {last} {reason:<22} {stage:<9} {source}[{sp}]@{so} attempts={attempts} event_id={event}{replayed} {detail}",
        position = letter.position(),
        last = time(h.last_failure_ms),
        reason = h.reason,
        stage = h.stage,
        source = h.source_topic,
        sp = h.source_partition,
        so = h.source_offset,
        attempts = h.attempts,
        event = letter.event_id.as_deref().unwrap_or("-"),
        replayed = if letter.replayed { " replayed" } else { "" },
        detail = h.detail,
    )
}

fn as_json(letter: &StoredDeadLetter) -> serde_json::Value {
    let h = &letter.headers;
    serde_json::json!({
        "dlq_partition": letter.partition,
        "dlq_offset": letter.offset,
        "reason": h.reason,
        "detail": h.detail,
        "stage": h.stage,
        "source_topic": h.source_topic,
        "source_partition": h.source_partition,
        "source_offset": h.source_offset,
        "attempts": h.attempts,
        "first_failure_time": time(h.first_failure_ms),
        "last_failure_time": time(h.last_failure_ms),
        "event_id": letter.event_id,
        "replayed": letter.replayed,
        "key": letter.key.as_deref().map(String::from_utf8_lossy),
        "payload": letter.payload.as_deref().map(String::from_utf8_lossy),
    })
}
