//! Where each actor lives: rendezvous (highest-random-weight) hashing over the active members.
//!
//! Every (actor, member) pair gets a pseudo-random weight from a fixed hash; an actor's home is
//! the candidate with the highest weight. Adding a member moves only the actors for which the
//! newcomer wins (about 1/n of them), removing one moves only the actors it hosted, and the result
//! depends on nothing but the inputs, so every replica computes the same placement. The hash is
//! spelled out here (FNV-1a + the splitmix64 finalizer) rather than taken from `std`, whose hasher
//! may change between Rust releases and would then split the cluster's view of placement.

use std::collections::BTreeMap;

use crate::state::{ActorKey, NodeId};

/// A member that may host actors (the caller passes only active members).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub id: NodeId,
    pub site: &'a str,
}

/// The home of `key` among `candidates`, preferring members of `preferred_site` when any of them
/// is a candidate. `None` only when there is no candidate at all.
pub fn home(
    candidates: &[Candidate<'_>],
    key: &ActorKey,
    preferred_site: Option<&str>,
) -> Option<NodeId> {
    pick(candidates, key_hash(key), preferred_site)
}

/// A standby for call `call_id` among `candidates` (the caller leaves the call's owner out),
/// preferring members of `preferred_site` when any of them is a candidate: the same rendezvous
/// pick as [`home`], over a hash of the call id. `None` only when there is no candidate.
pub fn standby(
    candidates: &[Candidate<'_>],
    call_id: &str,
    preferred_site: Option<&str>,
) -> Option<NodeId> {
    pick(candidates, call_hash(call_id), preferred_site)
}

/// The candidate with the highest weight for `key_hash`, among those in `preferred_site` when
/// any is.
fn pick(
    candidates: &[Candidate<'_>],
    key_hash: u64,
    preferred_site: Option<&str>,
) -> Option<NodeId> {
    let in_site = |c: &&Candidate<'_>| preferred_site.is_none_or(|site| c.site == site);
    let pool: Vec<&Candidate<'_>> = if candidates.iter().any(|c| in_site(&c)) {
        candidates.iter().filter(in_site).collect()
    } else {
        candidates.iter().collect()
    };
    pool.into_iter()
        // Ties (astronomically unlikely) go to the higher id, independent of input order.
        .max_by_key(|c| (weight(key_hash, c.id), c.id))
        .map(|c| c.id)
}

/// Homes for every actor in `actors` (key and optional preferred site); actors without any
/// candidate are left out.
pub fn assign<'k>(
    candidates: &[Candidate<'_>],
    actors: impl IntoIterator<Item = (&'k ActorKey, Option<&'k str>)>,
) -> BTreeMap<ActorKey, NodeId> {
    actors
        .into_iter()
        .filter_map(|(key, site)| home(candidates, key, site).map(|node| (key.clone(), node)))
        .collect()
}

fn key_hash(key: &ActorKey) -> u64 {
    // The kind tag keeps "queue/x" and "agent/x" independent.
    let mut h = fnv1a(0xcbf2_9ce4_8422_2325, &[key.kind as u8]);
    h = fnv1a(h, key.id.as_bytes());
    splitmix64(h)
}

fn call_hash(call_id: &str) -> u64 {
    // A tag distinct from the actor kinds keeps call ids independent of actor ids.
    let mut h = fnv1a(0xcbf2_9ce4_8422_2325, b"call/");
    h = fnv1a(h, call_id.as_bytes());
    splitmix64(h)
}

fn weight(key_hash: u64, node: NodeId) -> u64 {
    splitmix64(key_hash ^ splitmix64(node))
}

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<ActorKey> {
        (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    ActorKey::queue(format!("q{i}"))
                } else {
                    ActorKey::agent(format!("{}", 2000 + i))
                }
            })
            .collect()
    }

    fn nodes(ids: &[NodeId]) -> Vec<Candidate<'static>> {
        ids.iter()
            .map(|&id| Candidate { id, site: "dc1" })
            .collect()
    }

    fn place(candidates: &[Candidate<'_>], keys: &[ActorKey]) -> BTreeMap<ActorKey, NodeId> {
        assign(candidates, keys.iter().map(|k| (k, None)))
    }

    #[test]
    fn balanced_within_twenty_percent_on_three_nodes() {
        let keys = keys(1000);
        let placement = place(&nodes(&[1, 2, 3]), &keys);
        assert_eq!(placement.len(), 1000);
        for node in [1, 2, 3] {
            let count = placement.values().filter(|&&n| n == node).count();
            let expected = 1000.0 / 3.0;
            assert!(
                (count as f64 - expected).abs() <= expected * 0.2,
                "node {node} got {count} of 1000 keys"
            );
        }
    }

    #[test]
    fn join_moves_only_keys_won_by_the_newcomer() {
        let keys = keys(1000);
        let before = place(&nodes(&[1, 2, 3]), &keys);
        let after = place(&nodes(&[1, 2, 3, 4]), &keys);
        let moved: Vec<_> = keys.iter().filter(|k| before[*k] != after[*k]).collect();
        assert!(
            moved.iter().all(|k| after[*k] == 4),
            "a key moved between old members"
        );
        // About a quarter should move to the new member.
        assert!(
            (180..=320).contains(&moved.len()),
            "{} keys moved",
            moved.len()
        );
    }

    #[test]
    fn leave_moves_only_the_leavers_keys() {
        let keys = keys(1000);
        let before = place(&nodes(&[1, 2, 3, 4]), &keys);
        let after = place(&nodes(&[1, 2, 4]), &keys);
        for k in &keys {
            if before[k] == 3 {
                assert_ne!(after[k], 3);
            } else {
                assert_eq!(before[k], after[k], "{k} moved although its home stayed");
            }
        }
    }

    #[test]
    fn drained_member_keeps_nothing() {
        let keys = keys(300);
        // Draining = no longer a candidate.
        let after = place(&nodes(&[1, 3]), &keys);
        assert_eq!(after.len(), 300);
        assert!(after.values().all(|&n| n != 2));
        assert!(place(&[], &keys).is_empty());
    }

    #[test]
    fn site_affinity_prefers_the_site_and_falls_back() {
        let candidates = [
            Candidate { id: 1, site: "eu" },
            Candidate { id: 2, site: "us" },
            Candidate { id: 3, site: "us" },
        ];
        let keys = keys(200);
        let eu = assign(&candidates, keys.iter().map(|k| (k, Some("eu"))));
        assert!(eu.values().all(|&n| n == 1));
        let us = assign(&candidates, keys.iter().map(|k| (k, Some("us"))));
        assert!(us.values().all(|&n| n == 2 || n == 3));
        assert!(us.values().any(|&n| n == 2) && us.values().any(|&n| n == 3));
        // No active member in the preferred site: any member will do.
        let apac = assign(&candidates, keys.iter().map(|k| (k, Some("apac"))));
        assert_eq!(apac, place(&candidates, &keys));
    }

    #[test]
    fn deterministic_and_order_independent() {
        let keys = keys(500);
        let a = place(&nodes(&[7, 3, 11]), &keys);
        let b = place(&nodes(&[11, 7, 3]), &keys);
        assert_eq!(a, b);
        // Pinned values: a change here means replicas on different versions would disagree.
        let pinned: Vec<NodeId> = ["support", "sales", "billing", "vip", "nightly", "es"]
            .iter()
            .map(|id| home(&nodes(&[1, 2, 3]), &ActorKey::queue(*id), None).unwrap_or(0))
            .chain((2001..2007).map(|id| {
                home(&nodes(&[1, 2, 3]), &ActorKey::agent(id.to_string()), None).unwrap_or(0)
            }))
            .collect();
        assert_eq!(pinned, PINNED);
    }

    const PINNED: [NodeId; 12] = [3, 1, 3, 3, 2, 3, 1, 2, 2, 2, 1, 3];

    #[test]
    fn standby_spreads_prefers_the_site_and_is_deterministic() {
        let call_ids: Vec<String> = (0..600).map(|i| format!("call-{i}@10.0.0.1")).collect();
        let four = nodes(&[1, 2, 3, 4]);
        let mut counts = BTreeMap::new();
        for id in &call_ids {
            let pick = standby(&four, id, None).unwrap_or(0);
            *counts.entry(pick).or_insert(0usize) += 1;
            // Order of the candidates does not matter.
            assert_eq!(standby(&nodes(&[4, 3, 2, 1]), id, None), Some(pick));
        }
        assert_eq!(counts.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
        for (node, n) in &counts {
            assert!(
                (100..=200).contains(n),
                "node {node} is standby for {n} of 600"
            );
        }
        // A member going away moves only the calls it was standby for.
        for id in &call_ids {
            let before = standby(&four, id, None);
            let after = standby(&nodes(&[1, 2, 4]), id, None);
            if before != Some(3) {
                assert_eq!(before, after, "{id}");
            }
        }
        let sites = [
            Candidate { id: 1, site: "eu" },
            Candidate { id: 2, site: "us" },
            Candidate { id: 3, site: "us" },
        ];
        for id in &call_ids {
            assert_eq!(standby(&sites, id, Some("eu")), Some(1));
            assert!(matches!(standby(&sites, id, Some("us")), Some(2 | 3)));
            assert_eq!(
                standby(&sites, id, Some("apac")),
                standby(&sites, id, None),
                "no candidate in the site: any will do"
            );
        }
        assert_eq!(standby(&[], "x", None), None);
        // Pinned: replicas on different versions must agree.
        let pinned: Vec<NodeId> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|id| standby(&nodes(&[1, 2, 3]), id, None).unwrap_or(0))
            .collect();
        assert_eq!(pinned, STANDBY_PINNED);
    }

    const STANDBY_PINNED: [NodeId; 6] = [3, 1, 3, 1, 2, 1];
}
