//! The id range of one feed that a page request covers, as each source reads it.

use feedstream_core::ids::PostId;

use crate::PageRequest;

/// An id range of one feed, as each source reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdRange {
    /// Exclusive bounds.
    pub upper: Option<i64>,
    pub lower: Option<i64>,
    /// Take the `limit` lowest ids of the range instead of the highest.
    pub oldest_first: bool,
    pub limit: usize,
}

impl IdRange {
    pub(crate) fn of(request: &PageRequest) -> Self {
        Self {
            upper: request.max_id.map(PostId::as_i64),
            lower: request.since_id.max(request.min_id).map(PostId::as_i64),
            oldest_first: request.min_id.is_some(),
            limit: request.limit,
        }
    }

    pub(crate) fn is_first_page(&self) -> bool {
        self.upper.is_none() && self.lower.is_none()
    }

    /// The range's ids among `sources`, each already in the range's order: the union,
    /// without repeats, cut to the limit, newest first.
    pub(crate) fn merge<const N: usize>(&self, sources: [Vec<i64>; N]) -> Vec<i64> {
        let mut ids: Vec<i64> = sources.into_iter().flatten().collect();
        ids.sort_unstable();
        ids.dedup();
        if self.oldest_first {
            ids.truncate(self.limit);
            ids.reverse();
        } else {
            ids.reverse();
            ids.truncate(self.limit);
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(oldest_first: bool, limit: usize) -> IdRange {
        IdRange {
            upper: None,
            lower: Some(1),
            oldest_first,
            limit,
        }
    }

    #[test]
    fn merging_takes_the_right_end_of_the_union_newest_first() {
        // Newest first: each source gives its highest ids, descending.
        assert_eq!(
            range(false, 3).merge([vec![9, 5, 2], vec![8, 5, 4]]),
            vec![9, 8, 5]
        );
        // Oldest first (min_id): each source gives its lowest ids, ascending; the page
        // is still returned newest first.
        assert_eq!(
            range(true, 3).merge([vec![2, 5, 9], vec![4, 5, 8]]),
            vec![5, 4, 2]
        );
        assert_eq!(range(true, 3).merge([vec![], vec![]]), Vec::<i64>::new());
        assert_eq!(
            range(false, 2).merge([vec![9, 5], vec![], vec![9, 7]]),
            vec![9, 7]
        );
    }
}
