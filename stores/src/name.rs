//! The stores of a task, by name: the name is the store's directory under the task's
//! state directory, its key in the checkpoint file, and part of its changelog topic.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreName {
    /// followee → followers, with a count.
    Followers,
    /// author → post ids, with deletions.
    AuthorPosts,
}

impl StoreName {
    /// Every store a task has.
    pub const ALL: [StoreName; 2] = [StoreName::Followers, StoreName::AuthorPosts];

    pub fn as_str(self) -> &'static str {
        match self {
            StoreName::Followers => "followers",
            StoreName::AuthorPosts => "author-posts",
        }
    }
}

impl fmt::Display for StoreName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no store's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no store is named {0:?}; the stores are followers and author-posts")]
pub struct UnknownStore(pub String);

impl FromStr for StoreName {
    type Err = UnknownStore;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        StoreName::ALL
            .into_iter()
            .find(|store| store.as_str() == name)
            .ok_or_else(|| UnknownStore(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_strangers_are_refused() {
        for store in StoreName::ALL {
            assert_eq!(store.as_str().parse(), Ok(store));
        }
        assert_eq!(
            "follower".parse::<StoreName>(),
            Err(UnknownStore("follower".into()))
        );
    }
}
