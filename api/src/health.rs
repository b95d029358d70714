use std::sync::Arc;
use std::time::Duration;

use crate::publisher::EventPublisher;
use feedstream_read::FeedReader;
use serde::Serialize;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize)]
pub struct Check {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub kafka: Check,
    pub postgres: Check,
    pub redis: Check,
}

impl Health {
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

fn check<E: std::fmt::Display>(
    result: Result<Result<(), E>, tokio::time::error::Elapsed>,
) -> Check {
    match result {
        Ok(Ok(())) => Check {
            status: "up",
            error: None,
        },
        Ok(Err(error)) => Check {
            status: "down",
            error: Some(error.to_string()),
        },
        Err(_) => Check {
            status: "down",
            error: Some(format!("no answer within {CHECK_TIMEOUT:?}")),
        },
    }
}

/// Checks the broker, PostgreSQL and Redis concurrently, each within a bounded time.
pub async fn health(publisher: Arc<EventPublisher>, reader: &FeedReader) -> Health {
    let kafka = async {
        let publisher = publisher.clone();
        tokio::time::timeout(CHECK_TIMEOUT, async move {
            match tokio::task::spawn_blocking(move || publisher.check_broker(CHECK_TIMEOUT)).await {
                Ok(result) => result.map_err(|error| error.to_string()),
                Err(join) => Err(join.to_string()),
            }
        })
        .await
    };
    let postgres = tokio::time::timeout(CHECK_TIMEOUT, reader.ping_postgres());
    let redis = tokio::time::timeout(CHECK_TIMEOUT, reader.ping_redis());
    let (kafka, postgres, redis) = tokio::join!(kafka, postgres, redis);
    let (kafka, postgres, redis) = (check(kafka), check(postgres), check(redis));
    let all_up = [&kafka, &postgres, &redis].iter().all(|c| c.status == "up");
    Health {
        status: if all_up { "ok" } else { "degraded" },
        kafka,
        postgres,
        redis,
    }
}
