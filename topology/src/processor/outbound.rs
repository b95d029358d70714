//! The records a batch sends, in slots kept from batch to batch.

use std::sync::Arc;

use feedstream_kafka::OutboundRecord;

/// A batch's outbound records. A slot's key, payload and header buffers are cleared
/// and written again by the next batch, so that, once the slots have grown to the
/// largest batch, a fan-out allocates nothing per feed entry (before, four buffers per
/// entry were allocated and freed: key, payload, header list, header value).
#[derive(Default)]
pub(super) struct Outbound {
    slots: Vec<OutboundRecord>,
    len: usize,
}

impl Outbound {
    /// Empties the batch, keeping its slots.
    pub(super) fn reset(&mut self) {
        self.len = 0;
    }

    pub(super) fn records(&self) -> &[OutboundRecord] {
        &self.slots[..self.len]
    }

    /// Appends a record built elsewhere (dead letters, changelog records).
    pub(super) fn push(&mut self, record: OutboundRecord) {
        match self.slots.get_mut(self.len) {
            Some(slot) => *slot = record,
            None => self.slots.push(record),
        }
        self.len += 1;
    }

    /// Appends a record whose key and payload `write` fills into reused buffers, with
    /// one header.
    pub(super) fn write(
        &mut self,
        topic: &Arc<str>,
        timestamp: i64,
        header: (&'static str, &str),
        write: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>),
    ) {
        if self.len == self.slots.len() {
            self.slots.push(OutboundRecord {
                topic: topic.clone(),
                partition: None,
                key: Vec::new(),
                payload: None,
                timestamp: None,
                headers: Vec::new(),
            });
        }
        let slot = &mut self.slots[self.len];
        self.len += 1;
        if !Arc::ptr_eq(&slot.topic, topic) {
            slot.topic = topic.clone();
        }
        slot.partition = None;
        slot.timestamp = Some(timestamp);
        let (name, value) = header;
        match slot.headers.as_mut_slice() {
            [(kept_name, kept_value)] => {
                *kept_name = name;
                kept_value.clear();
                kept_value.push_str(value);
            }
            _ => {
                slot.headers.clear();
                slot.headers.push((name, value.to_string()));
            }
        }
        let mut payload = slot.payload.take().unwrap_or_default();
        payload.clear();
        slot.key.clear();
        write(&mut slot.key, &mut payload);
        slot.payload = Some(payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_slot_holds_only_what_was_written_last() {
        let feed: Arc<str> = "feed-events".into();
        let changelog: Arc<str> = "changelog".into();
        let mut outbound = Outbound::default();
        outbound.write(&feed, 1, ("event_id", "123456"), |key, payload| {
            key.extend_from_slice(b"long-key");
            payload.extend_from_slice(b"long payload");
        });
        outbound.push(OutboundRecord {
            topic: changelog.clone(),
            partition: Some(3),
            key: b"k".to_vec(),
            payload: None,
            timestamp: Some(2),
            headers: Vec::new(),
        });
        outbound.reset();
        assert!(outbound.records().is_empty());
        outbound.write(&feed, 3, ("event_id", "7"), |key, payload| {
            key.push(b'a');
            payload.push(b'b');
        });
        outbound.write(&feed, 4, ("event_id", "8"), |key, payload| {
            key.push(b'c');
            payload.push(b'd');
        });
        let records = outbound.records();
        assert_eq!(records.len(), 2);
        for (record, (key, payload, id, at)) in records
            .iter()
            .zip([(b"a", b"b", "7", 3), (b"c", b"d", "8", 4)])
        {
            assert_eq!(&*record.topic, "feed-events");
            assert_eq!(record.partition, None);
            assert_eq!(record.key, key);
            assert_eq!(record.payload.as_deref(), Some(&payload[..]));
            assert_eq!(record.headers, vec![("event_id", id.to_string())]);
            assert_eq!(record.timestamp, Some(at));
        }
    }
}
