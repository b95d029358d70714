//! Producing records and waiting for every acknowledgement.

use std::collections::VecDeque;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord};

use crate::{Delivered, KafkaFailure, OutboundRecord, Producer};

/// Sends every record and waits for all acknowledgements.
pub async fn deliver(
    producer: &Producer,
    records: &[OutboundRecord],
) -> Result<Vec<Delivered>, KafkaFailure> {
    let mut outbox = Outbox::new(producer);
    for record in records {
        outbox.send(record).await?;
    }
    outbox.flush().await
}

/// Sends records and waits for every acknowledgement; records in flight are bounded by
/// librdkafka's queue (a full queue waits for the oldest delivery).
pub struct Outbox<'p> {
    producer: &'p Producer,
    in_flight: VecDeque<(String, DeliveryFuture)>,
    delivered: Vec<Delivered>,
}

impl<'p> Outbox<'p> {
    pub fn new(producer: &'p Producer) -> Self {
        Self {
            producer,
            in_flight: VecDeque::new(),
            delivered: Vec::new(),
        }
    }

    pub async fn send(&mut self, record: &OutboundRecord) -> Result<(), KafkaFailure> {
        let headers = record
            .headers
            .iter()
            .fold(OwnedHeaders::new(), |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            });
        let mut future_record = FutureRecord::<[u8], [u8]>::to(&record.topic)
            .key(&record.key)
            .headers(headers);
        if let Some(payload) = &record.payload {
            future_record = future_record.payload(payload);
        }
        if let Some(partition) = record.partition {
            future_record = future_record.partition(partition);
        }
        if let Some(timestamp) = record.timestamp {
            future_record = future_record.timestamp(timestamp);
        }
        loop {
            match self.producer.send_result(future_record) {
                Ok(delivery) => {
                    self.in_flight
                        .push_back((record.topic.to_string(), delivery));
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    future_record = returned;
                    if !self.await_oldest().await? {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Err((error, _)) => return Err(KafkaFailure::Operation(error)),
            }
        }
    }

    /// Waits for all acknowledgements; fails on the first record the broker did not take.
    pub async fn flush(mut self) -> Result<Vec<Delivered>, KafkaFailure> {
        while self.await_oldest().await? {}
        Ok(self.delivered)
    }

    async fn await_oldest(&mut self) -> Result<bool, KafkaFailure> {
        let Some((topic, delivery)) = self.in_flight.pop_front() else {
            return Ok(false);
        };
        match delivery.await {
            Ok(Ok(delivery)) => {
                self.delivered.push(Delivered {
                    topic,
                    partition: delivery.partition,
                    offset: delivery.offset,
                });
                Ok(true)
            }
            Ok(Err((error, _))) => Err(KafkaFailure::Operation(error)),
            Err(_) => Err(KafkaFailure::Operation(KafkaError::Canceled)),
        }
    }
}
