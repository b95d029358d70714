//! The records a batch sends, in slots kept from batch to batch.

use std::sync::Arc;

use feedstream_kafka::OutboundRecord;

/// A feed event's JSON is about 200 bytes: a new slot's payload buffer starts there,
/// so that it is allocated once.
const PAYLOAD_CAPACITY: usize = 256;

/// A batch's outbound records. A slot's key, payload and header buffers are cleared
/// and written again by the next batch, so that, once the slots have grown to the
/// largest batch, a fan-out allocates nothing per feed entry (before, four buffers per
/// entry were allocated and freed: key, payload, header list, header value).
#[derive(Default)]
pub(super) struct Outbound {
    slots: Vec<OutboundRecord>,
    len: usize,
}

/// Where a record goes and what it carries besides its key and payload.
pub(super) struct Destination<'a> {
    pub(super) topic: &'a Arc<str>,
    /// `None` lets the partitioner choose by key.
    pub(super) partition: Option<i32>,
    pub(super) timestamp: i64,
    pub(super) header: Option<(&'static str, &'a str)>,
}

impl Outbound {
    /// Empties the batch, keeping its slots.
    pub(super) fn reset(&mut self) {
        self.len = 0;
    }

    pub(super) fn records(&self) -> &[OutboundRecord] {
        &self.slots[..self.len]
    }

    /// Appends a record built elsewhere (dead letters, which are rare).
    pub(super) fn push(&mut self, record: OutboundRecord) {
        match self.slots.get_mut(self.len) {
            Some(slot) => *slot = record,
            None => self.slots.push(record),
        }
        self.len += 1;
    }

    /// Appends a record whose key and payload `write` writes into the slot's buffers;
    /// it returns false for a record without a payload (a tombstone).
    pub(super) fn write(
        &mut self,
        to: Destination<'_>,
        write: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>) -> bool,
    ) {
        if self.len == self.slots.len() {
            self.slots.push(OutboundRecord {
                topic: to.topic.clone(),
                partition: None,
                key: Vec::new(),
                payload: Some(Vec::with_capacity(PAYLOAD_CAPACITY)),
                timestamp: None,
                headers: Vec::new(),
            });
        }
        let slot = &mut self.slots[self.len];
        self.len += 1;
        if !Arc::ptr_eq(&slot.topic, to.topic) {
            slot.topic = to.topic.clone();
        }
        slot.partition = to.partition;
        slot.timestamp = Some(to.timestamp);
        match (to.header, slot.headers.as_mut_slice()) {
            (Some((name, value)), [(kept_name, kept_value)]) => {
                *kept_name = name;
                kept_value.clear();
                kept_value.push_str(value);
            }
            (Some((name, value)), _) => {
                slot.headers.clear();
                slot.headers.push((name, value.to_string()));
            }
            // The header's buffer is dropped: a slot used for a changelog record in
            // one batch is mostly used for one in the next too.
            (None, _) => slot.headers.clear(),
        }
        let mut payload = slot
            .payload
            .take()
            .unwrap_or_else(|| Vec::with_capacity(PAYLOAD_CAPACITY));
        payload.clear();
        slot.key.clear();
        if write(&mut slot.key, &mut payload) {
            slot.payload = Some(payload);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to<'a>(
        topic: &'a Arc<str>,
        partition: Option<i32>,
        timestamp: i64,
        header: Option<(&'static str, &'a str)>,
    ) -> Destination<'a> {
        Destination {
            topic,
            partition,
            timestamp,
            header,
        }
    }

    #[test]
    fn a_reused_slot_holds_only_what_was_written_last() {
        let feed: Arc<str> = "feed-events".into();
        let changelog: Arc<str> = "changelog".into();
        let mut outbound = Outbound::default();
        outbound.write(
            to(&feed, None, 1, Some(("event_id", "123456"))),
            |key, payload| {
                key.extend_from_slice(b"long-key");
                payload.extend_from_slice(b"long payload");
                true
            },
        );
        outbound.write(to(&changelog, Some(3), 2, None), |key, _| {
            key.push(b'k');
            false
        });
        outbound.reset();
        assert!(outbound.records().is_empty());
        outbound.write(to(&changelog, Some(5), 3, None), |key, payload| {
            key.push(b'a');
            payload.push(b'b');
            true
        });
        outbound.write(
            to(&feed, None, 4, Some(("event_id", "8"))),
            |key, payload| {
                key.push(b'c');
                payload.push(b'd');
                true
            },
        );
        outbound.write(to(&changelog, Some(1), 5, None), |key, _| {
            key.push(b'e');
            false
        });
        let written: Vec<_> = outbound
            .records()
            .iter()
            .map(|r| {
                let topic = r.topic.to_string();
                (
                    topic,
                    r.partition,
                    r.key.clone(),
                    r.payload.clone(),
                    r.headers.clone(),
                    r.timestamp,
                )
            })
            .collect();
        let header = vec![("event_id", "8".to_string())];
        assert_eq!(
            written,
            vec![
                (
                    "changelog".into(),
                    Some(5),
                    b"a".to_vec(),
                    Some(b"b".to_vec()),
                    vec![],
                    Some(3)
                ),
                (
                    "feed-events".into(),
                    None,
                    b"c".to_vec(),
                    Some(b"d".to_vec()),
                    header,
                    Some(4)
                ),
                (
                    "changelog".into(),
                    Some(1),
                    b"e".to_vec(),
                    None,
                    vec![],
                    Some(5)
                ),
            ]
        );
    }
}
