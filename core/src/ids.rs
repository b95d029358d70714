//! Identifiers and the Snowflake-style id generator.
//!
//! Ids are positive 63-bit integers (they fit PostgreSQL's BIGINT). On public JSON they are
//! decimal strings, as Mastodon and Twitter's `id_str` do, because JavaScript and jq lose
//! integers above 2^53; inputs accept a string or a JSON integer.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Why a text or number is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} must be a positive integer below 2^63, got {input:?}")]
pub struct InvalidId {
    pub kind: &'static str,
    pub input: String,
}

macro_rules! define_id {
    ($name:ident, $kind:literal) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(u64);

        impl $name {
            pub fn new(value: u64) -> Result<Self, InvalidId> {
                if value == 0 || value > i64::MAX as u64 {
                    return Err(InvalidId {
                        kind: $kind,
                        input: value.to_string(),
                    });
                }
                Ok(Self(value))
            }

            pub fn get(self) -> u64 {
                self.0
            }

            /// The id as PostgreSQL's BIGINT; lossless because ids are below 2^63.
            pub fn as_i64(self) -> i64 {
                self.0 as i64
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(text: &str) -> Result<Self, InvalidId> {
                let invalid = || InvalidId {
                    kind: $kind,
                    input: text.to_string(),
                };
                if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid());
                }
                text.parse::<u64>()
                    .map_err(|_| invalid())
                    .and_then(|value| Self::new(value).map_err(|_| invalid()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer
                    .deserialize_any(IdVisitor($kind))
                    .and_then(|value| Self::new(value).map_err(de::Error::custom))
            }
        }
    };
}

define_id!(UserId, "a user id");
define_id!(PostId, "a post id");
define_id!(EventId, "an event id");

/// The largest id a JSON number may carry: every JSON parser holds integers up to 2^53 - 1
/// exactly (JavaScript's safe range); ids above it must be strings.
pub const MAX_NUMERIC_ID: u64 = (1 << 53) - 1;

struct IdVisitor(&'static str);

impl IdVisitor {
    fn in_numeric_range<E: de::Error>(&self, value: u64) -> Result<u64, E> {
        if value > MAX_NUMERIC_ID {
            return Err(E::custom(format!(
                "{} above 2^53 - 1 must be a decimal string: JSON numbers above it are not exact",
                self.0
            )));
        }
        Ok(value)
    }
}

impl de::Visitor<'_> for IdVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} as a decimal string, or a positive integer up to 2^53 - 1",
            self.0
        )
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<u64, E> {
        self.in_numeric_range(value)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<u64, E> {
        let value =
            u64::try_from(value).map_err(|_| E::custom(format!("{} must be positive", self.0)))?;
        self.in_numeric_range(value)
    }

    /// `7.0` is the integer 7 to JSON Schema and to JavaScript.
    fn visit_f64<E: de::Error>(self, value: f64) -> Result<u64, E> {
        if value.fract() != 0.0 || !(1.0..=MAX_NUMERIC_ID as f64).contains(&value) {
            return Err(E::custom(format!(
                "{} must be a whole number from 1 to 2^53 - 1, or a decimal string",
                self.0
            )));
        }
        Ok(value as u64)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(E::custom(format!("{} must be decimal digits", self.0)));
        }
        text.parse()
            .map_err(|_| E::custom(format!("{} is out of range", self.0)))
    }
}

/// Milliseconds since the Unix epoch of the id layout's zero: 2020-01-01T00:00:00Z.
pub const ID_EPOCH_MS: i64 = 1_577_836_800_000;
const NODE_BITS: u32 = 10;
const SEQUENCE_BITS: u32 = 12;
/// Largest node id the layout holds.
pub const MAX_NODE_ID: u16 = (1 << NODE_BITS) - 1;
const MAX_SEQUENCE: u16 = (1 << SEQUENCE_BITS) - 1;

/// Issues time-ordered ids unique across instances: 41 bits of milliseconds since
/// [`ID_EPOCH_MS`], 10 bits of node id, 12 bits of sequence.
///
/// Each id comes with the millisecond it encodes, which becomes the event's `timestamp`,
/// so ordering events by (timestamp, id) never contradicts the id order. If the wall clock
/// steps back, or a millisecond's 4096 sequence numbers run out, the generator keeps
/// counting from its last millisecond instead of reusing ids.
pub struct SnowflakeGenerator {
    node_id: u16,
    clock: fn() -> i64,
    last: Mutex<(i64, u16)>,
}

/// Why a node id was refused.
#[derive(Debug, thiserror::Error)]
#[error("node id {0} is out of range: it must be between 0 and {MAX_NODE_ID}, and unique per API instance")]
pub struct InvalidNodeId(pub u32);

impl SnowflakeGenerator {
    pub fn new(node_id: u32) -> Result<Self, InvalidNodeId> {
        Self::with_clock(node_id, wall_clock_ms)
    }

    pub fn with_clock(node_id: u32, clock: fn() -> i64) -> Result<Self, InvalidNodeId> {
        let node_id = u16::try_from(node_id)
            .ok()
            .filter(|id| *id <= MAX_NODE_ID)
            .ok_or(InvalidNodeId(node_id))?;
        Ok(Self {
            node_id,
            clock,
            last: Mutex::new((0, 0)),
        })
    }

    /// The next id and the Unix millisecond it encodes.
    pub fn next(&self) -> (u64, i64) {
        let now = (self.clock)().max(ID_EPOCH_MS);
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (last_ms, last_sequence) = *last;
        let (ms, sequence) = if now > last_ms {
            (now, 0)
        } else if last_sequence < MAX_SEQUENCE {
            (last_ms, last_sequence + 1)
        } else {
            (last_ms + 1, 0)
        };
        *last = (ms, sequence);
        let id = ((ms - ID_EPOCH_MS) as u64) << (NODE_BITS + SEQUENCE_BITS)
            | u64::from(self.node_id) << SEQUENCE_BITS
            | u64::from(sequence);
        (id, ms)
    }
}

/// The Unix millisecond encoded in an id issued by [`SnowflakeGenerator`].
pub fn id_timestamp_ms(id: u64) -> i64 {
    (id >> (NODE_BITS + SEQUENCE_BITS)) as i64 + ID_EPOCH_MS
}

pub fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(ID_EPOCH_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frozen_clock() -> i64 {
        ID_EPOCH_MS + 5_000
    }

    #[test]
    fn ids_increase_even_when_the_clock_stands_still() {
        let generator = SnowflakeGenerator::with_clock(3, frozen_clock).unwrap();
        let ids: Vec<(u64, i64)> = (0..10_000).map(|_| generator.next()).collect();
        assert!(ids.windows(2).all(|pair| pair[0].0 < pair[1].0));
        assert!(ids.iter().all(|(id, ms)| id_timestamp_ms(*id) == *ms));
        // 4096 per millisecond, then the generator borrows the next millisecond.
        assert_eq!(ids[4095].1, frozen_clock());
        assert_eq!(ids[4096].1, frozen_clock() + 1);
        assert_eq!((ids[0].0 >> SEQUENCE_BITS) & u64::from(MAX_NODE_ID), 3);
    }

    #[test]
    fn node_ids_keep_instances_apart() {
        let a = SnowflakeGenerator::with_clock(1, frozen_clock).unwrap();
        let b = SnowflakeGenerator::with_clock(2, frozen_clock).unwrap();
        assert_ne!(a.next().0, b.next().0);
        assert!(SnowflakeGenerator::new(u32::from(MAX_NODE_ID) + 1).is_err());
    }

    #[test]
    fn ids_are_strings_on_output_and_strings_or_numbers_on_input() {
        let id = UserId::new(42).unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"42\"");
        assert_eq!(serde_json::from_str::<UserId>("\"42\"").unwrap(), id);
        assert_eq!(serde_json::from_str::<UserId>("42").unwrap(), id);
        assert_eq!(serde_json::from_str::<UserId>("42.0").unwrap(), id);
        let safe = MAX_NUMERIC_ID.to_string();
        assert_eq!(
            serde_json::from_str::<UserId>(&safe).unwrap().get(),
            MAX_NUMERIC_ID
        );
        let beyond = (MAX_NUMERIC_ID + 1).to_string();
        assert!(serde_json::from_str::<UserId>(&format!("\"{beyond}\"")).is_ok());
        for bad in [
            "0",
            "-1",
            "\"\"",
            "\"4x\"",
            "\"9223372036854775808\"",
            "1.5",
            "0.0",
            "1e300",
            beyond.as_str(),
            "null",
        ] {
            assert!(
                serde_json::from_str::<UserId>(bad).is_err(),
                "{bad} accepted"
            );
        }
        assert!("+5".parse::<UserId>().is_err());
        assert_eq!("7".parse::<UserId>().unwrap().get(), 7);
    }
}
