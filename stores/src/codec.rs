//! Binary encoding of store values: one format-version byte, then postcard.
//!
//! The version byte lets a newer build refuse (or migrate) values written by an older one
//! instead of misreading them; changelog records use the same bytes.

use serde::{de::DeserializeOwned, Serialize};

use crate::StoreError;

/// Format version written by this build.
pub const VALUE_FORMAT_VERSION: u8 = 1;

pub fn encode_value<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut bytes = vec![VALUE_FORMAT_VERSION];
    bytes.extend(postcard::to_stdvec(value)?);
    Ok(bytes)
}

pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    let (&version, body) = bytes.split_first().ok_or(StoreError::EmptyValue)?;
    if version != VALUE_FORMAT_VERSION {
        return Err(StoreError::UnsupportedVersion {
            found: version,
            expected: VALUE_FORMAT_VERSION,
        });
    }
    Ok(postcard::from_bytes(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_unknown_versions() {
        let bytes = encode_value(&vec![3u64, 2, 1]).unwrap();
        assert_eq!(bytes[0], VALUE_FORMAT_VERSION);
        assert_eq!(decode_value::<Vec<u64>>(&bytes).unwrap(), vec![3, 2, 1]);

        let mut future = bytes.clone();
        future[0] = VALUE_FORMAT_VERSION + 1;
        assert!(matches!(
            decode_value::<Vec<u64>>(&future),
            Err(StoreError::UnsupportedVersion { .. })
        ));
        assert!(matches!(
            decode_value::<Vec<u64>>(&[]),
            Err(StoreError::EmptyValue)
        ));
    }
}
