//! The pure core of feedstream: what the feed should contain, free of I/O. Ids, the
//! public JSON contracts of the input events and of `feed-events`, the feed rules over
//! the task's stores, the reference model the tests compare against, the choice of a
//! task's next input by stream time, and the retry policy.

pub mod event;
pub mod feed;
pub mod ids;
pub mod model;
pub mod retry;
pub mod stream_time;
