//! The workload: a social graph with power-law follower counts and the operations that
//! drive the system. Pure and seeded, so that a run can be repeated exactly.

use std::collections::HashSet;

/// One request to the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Follow { follower: u64, followee: u64 },
    Unfollow { follower: u64, followee: u64 },
    Post { author: u64 },
    Read { user: u64 },
}

#[derive(Debug, Clone)]
pub struct Graph {
    /// Users are 1..=users.
    pub users: u64,
    /// (follower, followee), each pair once, no self-follows.
    pub edges: Vec<(u64, u64)>,
    /// Followers of each user, indexed by user id (index 0 unused).
    pub followers: Vec<Vec<u64>>,
}

/// Exponent of the follower-count power law: rank r gets about a / r^ALPHA followers.
/// 1.0 (Zipf) gives a handful of users most of the graph can follow and a long tail.
const ALPHA: f64 = 1.0;

impl Graph {
    /// `follows` edges among `users` users; follower counts follow a power law by rank,
    /// capped at users - 1, and ranks are shuffled over ids.
    pub fn generate(users: u64, follows: usize, rng: &mut fastrand::Rng) -> Graph {
        let counts = follower_counts(users, follows);
        let mut ids: Vec<u64> = (1..=users).collect();
        rng.shuffle(&mut ids);
        let mut followers = vec![Vec::new(); users as usize + 1];
        let mut edges = Vec::with_capacity(follows);
        for (rank, count) in counts.iter().enumerate() {
            let followee = ids[rank];
            let chosen = distinct_others(users, followee, *count, rng);
            edges.extend(chosen.iter().map(|follower| (*follower, followee)));
            followers[followee as usize] = chosen;
        }
        rng.shuffle(&mut edges);
        Graph {
            users,
            edges,
            followers,
        }
    }

    pub fn follower_count(&self, user: u64) -> usize {
        self.followers.get(user as usize).map_or(0, Vec::len)
    }

    /// Users with more followers than `threshold`: their posts are merged on read.
    pub fn celebrities(&self, threshold: u64) -> Vec<u64> {
        (1..=self.users)
            .filter(|user| self.follower_count(*user) as u64 > threshold)
            .collect()
    }

    /// (author, one of its followers) for authors that are fanned out on write, to
    /// watch a post arrive in a follower's feed.
    pub fn probe_pairs(&self, threshold: u64) -> Vec<(u64, u64)> {
        (1..=self.users)
            .filter(|user| (1..=threshold as usize).contains(&self.follower_count(*user)))
            .map(|user| (user, self.followers[user as usize][0]))
            .collect()
    }

    /// `posts` posts by uniformly chosen authors, with follow churn: about `churn` of
    /// the operations unfollow an existing edge or follow a random user.
    pub fn post_phase(&self, posts: usize, churn: f64, rng: &mut fastrand::Rng) -> Vec<Op> {
        let mut ops = Vec::with_capacity(posts + (posts as f64 * churn * 2.0) as usize);
        let mut written = 0;
        while written < posts {
            let op = self.next_op(churn, rng);
            written += usize::from(matches!(op, Op::Post { .. }));
            ops.push(op);
        }
        ops
    }

    fn next_op(&self, churn: f64, rng: &mut fastrand::Rng) -> Op {
        if rng.f64() >= churn || self.edges.is_empty() {
            return Op::Post {
                author: rng.u64(1..=self.users),
            };
        }
        if rng.bool() {
            let (follower, followee) = self.edges[rng.usize(..self.edges.len())];
            Op::Unfollow { follower, followee }
        } else {
            let follower = rng.u64(1..=self.users);
            let followee = loop {
                let followee = rng.u64(1..=self.users);
                if followee != follower {
                    break followee;
                }
            };
            Op::Follow { follower, followee }
        }
    }
}

/// Follower count of each rank: min(users - 1, a / rank^ALPHA) with `a` the smallest
/// scale that reaches `follows` in all, then trimmed from the tail to exactly `follows`.
fn follower_counts(users: u64, follows: usize) -> Vec<usize> {
    let cap = users.saturating_sub(1) as usize;
    let follows = follows.min(cap * users as usize);
    let counts_at = |scale: f64| -> Vec<usize> {
        (1..=users)
            .map(|rank| ((scale / (rank as f64).powf(ALPHA)) as usize).min(cap))
            .collect()
    };
    let (mut low, mut high) = (0.0_f64, (follows as f64 + 1.0) * users as f64);
    for _ in 0..100 {
        let middle = (low + high) / 2.0;
        if counts_at(middle).iter().sum::<usize>() >= follows {
            high = middle;
        } else {
            low = middle;
        }
    }
    let mut counts = counts_at(high);
    let mut excess = counts.iter().sum::<usize>().saturating_sub(follows);
    for count in counts.iter_mut().rev() {
        let take = excess.min(*count);
        *count -= take;
        excess -= take;
        if excess == 0 {
            break;
        }
    }
    counts
}

/// `count` distinct users other than `except`.
fn distinct_others(users: u64, except: u64, count: usize, rng: &mut fastrand::Rng) -> Vec<u64> {
    if count * 4 > users as usize {
        let mut others: Vec<u64> = (1..=users).filter(|user| *user != except).collect();
        rng.shuffle(&mut others);
        others.truncate(count);
        return others;
    }
    let mut chosen = HashSet::with_capacity(count);
    let mut ordered = Vec::with_capacity(count);
    while ordered.len() < count {
        let user = rng.u64(1..=users);
        if user != except && chosen.insert(user) {
            ordered.push(user);
        }
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(seed: u64) -> Graph {
        Graph::generate(5_000, 150_000, &mut fastrand::Rng::with_seed(seed))
    }

    #[test]
    fn the_graph_has_exactly_the_follows_asked_for_each_once() {
        let graph = graph(1);
        assert_eq!(graph.edges.len(), 150_000);
        let distinct: HashSet<_> = graph.edges.iter().collect();
        assert_eq!(distinct.len(), graph.edges.len());
        assert!(graph
            .edges
            .iter()
            .all(|(follower, followee)| follower != followee));
        let indexed: usize = graph.followers.iter().map(Vec::len).sum();
        assert_eq!(indexed, graph.edges.len());
    }

    #[test]
    fn follower_counts_follow_a_power_law_with_a_few_celebrities() {
        let graph = graph(2);
        let mut counts: Vec<usize> = (1..=graph.users)
            .map(|user| graph.follower_count(user))
            .collect();
        counts.sort_unstable();
        let median = counts[counts.len() / 2];
        let top = counts[counts.len() - 1];
        assert!(top <= 4_999);
        assert!(top > 50 * median.max(1), "top {top}, median {median}");
        let celebrities = graph.celebrities(2_000);
        assert!(
            (3..=20).contains(&celebrities.len()),
            "{} celebrities",
            celebrities.len()
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_workload() {
        assert_eq!(graph(3).edges, graph(3).edges);
        let graph = graph(3);
        let ops = |seed| graph.post_phase(1_000, 0.02, &mut fastrand::Rng::with_seed(seed));
        assert_eq!(ops(4), ops(4));
    }

    #[test]
    fn the_post_phase_has_the_posts_asked_for_and_some_churn() {
        let graph = graph(5);
        let ops = graph.post_phase(10_000, 0.02, &mut fastrand::Rng::with_seed(6));
        let posts = ops
            .iter()
            .filter(|op| matches!(op, Op::Post { .. }))
            .count();
        assert_eq!(posts, 10_000);
        let churn = ops.len() - posts;
        assert!((100..=400).contains(&churn), "{churn} churn operations");
    }

    #[test]
    fn probes_are_fanned_out_authors_with_one_of_their_followers() {
        let graph = graph(7);
        let probes = graph.probe_pairs(2_000);
        assert!(probes.len() > 1_000);
        for (author, follower) in probes {
            assert!(graph.followers[author as usize].contains(&follower));
            assert!(graph.follower_count(author) <= 2_000);
        }
    }
}
