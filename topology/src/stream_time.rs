//! Which input a task processes next (DESIGN.md §4: records of the two inputs in
//! timestamp order, waiting a bounded time for a lagging input, as Kafka Streams'
//! `max.task.idle.ms`).

use std::time::Duration;

/// Position of a record in stream time: (timestamp, event id).
pub type StreamTime = (i64, u64);

/// The decision for one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Process the head of the posts queue.
    Posts,
    /// Process the head of the follows queue.
    Follows,
    /// One queue has records, the other is empty and may be lagging: wait for it.
    Wait,
    /// Both queues are empty.
    Idle,
}

/// What the runtime knows of the input whose queue is empty.
#[derive(Debug, Clone, Copy)]
pub struct EmptyInput {
    /// The broker has nothing more for it (position ≥ high watermark).
    pub caught_up: bool,
    /// How long the task has already waited for it.
    pub waited: Duration,
}

/// Earliest head first (ties go to follows, so a follow and a post of the same instant
/// are seen in event-id order by the id part). With one queue empty, process anyway if
/// that input is caught up or the task has waited `max_idle`.
pub fn next(
    posts: Option<StreamTime>,
    follows: Option<StreamTime>,
    empty: EmptyInput,
    max_idle: Duration,
) -> Next {
    match (posts, follows) {
        (Some(post), Some(follow)) => {
            if post < follow {
                Next::Posts
            } else {
                Next::Follows
            }
        }
        (None, None) => Next::Idle,
        (only_posts, _) => {
            if empty.caught_up || empty.waited >= max_idle {
                if only_posts.is_some() {
                    Next::Posts
                } else {
                    Next::Follows
                }
            } else {
                Next::Wait
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_millis(500);
    const LAGGING: EmptyInput = EmptyInput {
        caught_up: false,
        waited: Duration::ZERO,
    };

    #[test]
    fn earliest_head_goes_first() {
        assert_eq!(next(Some((5, 1)), Some((7, 2)), LAGGING, IDLE), Next::Posts);
        assert_eq!(
            next(Some((7, 3)), Some((7, 2)), LAGGING, IDLE),
            Next::Follows
        );
        assert_eq!(next(None, None, LAGGING, IDLE), Next::Idle);
    }

    #[test]
    fn waits_for_a_lagging_input_at_most_max_idle() {
        assert_eq!(next(Some((5, 1)), None, LAGGING, IDLE), Next::Wait);
        let waited = EmptyInput {
            caught_up: false,
            waited: IDLE,
        };
        assert_eq!(next(Some((5, 1)), None, waited, IDLE), Next::Posts);
        let caught_up = EmptyInput {
            caught_up: true,
            waited: Duration::ZERO,
        };
        assert_eq!(next(None, Some((5, 1)), caught_up, IDLE), Next::Follows);
    }
}
