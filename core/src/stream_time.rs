//! Which input a task processes next (DESIGN.md §4): records of the two inputs in
//! timestamp order. A task whose other input has nothing buffered waits for it as long
//! as the broker still holds records of that input; only once that input is caught up
//! does it wait at most `max.task.idle.ms` for records not yet produced, then process
//! the input it has. This is Kafka Streams' rule since KIP-695: running ahead of a
//! lagging input would let a post overtake the follows before it, so a replayed backlog
//! would lose feed entries whenever one fetch is slower than the other.

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
    /// One queue has records, the other is empty: wait for it.
    Wait,
    /// Both queues are empty.
    Idle,
}

/// What the runtime knows of the input whose queue is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptyInput {
    /// The broker holds records of it that the task has not read yet, or the broker
    /// did not say: wait, however long it takes.
    Lagging,
    /// The task has read everything the broker holds of it, and has known so for this
    /// long: records it waits for have not been produced yet.
    CaughtUp { for_: Duration },
}

/// Earliest head first (ties go to follows, so a follow and a post of the same instant
/// are seen in event-id order by the id part). With one queue empty, process the other
/// only once the empty input has been caught up for `max_idle`.
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
        (only_posts, _) => match empty {
            EmptyInput::CaughtUp { for_ } if for_ >= max_idle => {
                if only_posts.is_some() {
                    Next::Posts
                } else {
                    Next::Follows
                }
            }
            EmptyInput::CaughtUp { .. } | EmptyInput::Lagging => Next::Wait,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_millis(500);

    fn caught_up(for_: Duration) -> EmptyInput {
        EmptyInput::CaughtUp { for_ }
    }

    #[test]
    fn earliest_head_goes_first() {
        let lagging = EmptyInput::Lagging;
        assert_eq!(next(Some((5, 1)), Some((7, 2)), lagging, IDLE), Next::Posts);
        assert_eq!(
            next(Some((7, 3)), Some((7, 2)), lagging, IDLE),
            Next::Follows
        );
        assert_eq!(
            next(Some((7, 2)), Some((7, 2)), lagging, IDLE),
            Next::Follows
        );
        assert_eq!(next(None, None, lagging, IDLE), Next::Idle);
    }

    /// The defect of issue 12: a lagging input was overtaken once `max_idle` passed.
    #[test]
    fn never_runs_ahead_of_an_input_the_broker_still_holds_records_of() {
        for max_idle in [Duration::ZERO, IDLE, Duration::from_secs(3600)] {
            assert_eq!(
                next(Some((5, 1)), None, EmptyInput::Lagging, max_idle),
                Next::Wait
            );
            assert_eq!(
                next(None, Some((5, 1)), EmptyInput::Lagging, max_idle),
                Next::Wait
            );
        }
    }

    #[test]
    fn a_caught_up_input_is_waited_for_at_most_max_idle() {
        assert_eq!(
            next(Some((5, 1)), None, caught_up(Duration::ZERO), IDLE),
            Next::Wait
        );
        assert_eq!(next(Some((5, 1)), None, caught_up(IDLE), IDLE), Next::Posts);
        assert_eq!(
            next(None, Some((5, 1)), caught_up(IDLE * 2), IDLE),
            Next::Follows
        );
        // Kafka Streams' default, 0: a caught-up input is not waited for at all.
        assert_eq!(
            next(
                Some((5, 1)),
                None,
                caught_up(Duration::ZERO),
                Duration::ZERO
            ),
            Next::Posts
        );
    }
}
