//! The replicated cluster state and the commands that change it.
//!
//! [`ClusterState`] is plain data: every replica applies the same committed [`Command`]s in the
//! same order through [`ClusterState::apply`], which is deterministic (ordered maps, no clocks, no
//! randomness), so every replica holds the same state at the same index. Commands travel inside
//! Raft entries as a version byte followed by rkyv bytes; [`Command::decode`] validates them
//! (bytecheck) so a corrupt or unknown entry is rejected the same way everywhere.

use std::collections::BTreeMap;
use std::fmt;

use rkyv::rancor;
use rkyv::util::AlignedVec;
use serde::{Deserialize, Serialize};

use crate::placement::{self, Candidate};

/// A cluster member's id; also its Raft id (never 0).
pub type NodeId = u64;

/// Version byte in front of every encoded [`Command`].
const COMMAND_VERSION: u8 = 1;
/// Version byte in front of every encoded [`ClusterState`] (snapshot data).
const STATE_VERSION: u8 = 1;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub enum MemberStatus {
    /// Hosts actors.
    Active,
    /// Still a member, but its actors have moved elsewhere and it gets no new ones.
    Draining,
    /// Gone; kept as a tombstone so its id and history stay visible.
    Removed,
    /// Declared dead by the leader after `failure_timeout` of silence; its actors moved. It comes
    /// back Active once heard again and never resumes what it lost (its actors stay where they
    /// moved until a `Rebalance`).
    Failed,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Member {
    pub id: NodeId,
    pub name: String,
    pub site: String,
    /// Cluster (QUIC) address, `host:port`.
    pub raft_addr: String,
    pub sip_addr: String,
    pub http_addr: String,
    pub status: MemberStatus,
    /// Log index of the entry that (re)added the member.
    pub joined_at_index: u64,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(PartialEq, Eq, PartialOrd, Ord))]
pub enum ActorKind {
    Queue,
    Agent,
}

impl ActorKind {
    fn prefix(self) -> &'static str {
        match self {
            ActorKind::Queue => "queue/",
            ActorKind::Agent => "agent/",
        }
    }
}

/// A placed actor. Its configuration document is stored under [`ActorKey::config_key`]
/// (`queue/<id>`, `agent/<id>`); serialized as that string.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(PartialEq, Eq, PartialOrd, Ord))]
#[serde(into = "String", try_from = "String")]
pub struct ActorKey {
    pub kind: ActorKind,
    pub id: String,
}

impl ActorKey {
    pub fn queue(id: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::Queue,
            id: id.into(),
        }
    }

    pub fn agent(id: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::Agent,
            id: id.into(),
        }
    }

    /// The actor a configuration key belongs to, if it names one.
    pub fn from_config_key(key: &str) -> Option<Self> {
        [ActorKind::Queue, ActorKind::Agent]
            .into_iter()
            .find_map(|kind| match key.strip_prefix(kind.prefix()) {
                Some(id) if !id.is_empty() => Some(Self {
                    kind,
                    id: id.to_owned(),
                }),
                _ => None,
            })
    }

    pub fn config_key(&self) -> String {
        format!("{}{}", self.kind.prefix(), self.id)
    }
}

impl fmt::Display for ActorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.kind.prefix(), self.id)
    }
}

impl From<ActorKey> for String {
    fn from(key: ActorKey) -> String {
        key.config_key()
    }
}

impl TryFrom<String> for ActorKey {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Self::from_config_key(&s).ok_or_else(|| format!("not an actor key: {s:?}"))
    }
}

/// An actor's home and the placement epoch at which it was assigned there.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Placement {
    pub node: NodeId,
    pub epoch: u64,
}

#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct ClusterState {
    pub members: BTreeMap<NodeId, Member>,
    /// Configuration documents (`queue/support`, `agent/2001`, `did/1000`, ...): opaque bytes
    /// that the node encodes and decodes.
    pub config: BTreeMap<String, Vec<u8>>,
    /// Preferred site of actors whose configuration named one.
    pub affinity: BTreeMap<ActorKey, String>,
    pub placement: BTreeMap<ActorKey, Placement>,
    /// Raised by every command that moves at least one actor; the moved actors carry the new value.
    pub placement_epoch: u64,
    /// Number of configuration writes applied (puts, and deletes of existing keys).
    pub config_revision: u64,
}

/// A change to the cluster state, proposed through Raft.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub enum Command {
    /// Adds the member, or updates the addresses, name and site of an existing one. The status
    /// and `joined_at_index` given are ignored: a new or re-added member is Active and joined at
    /// this entry's index. Actors without a home are placed; nothing else moves (see `Rebalance`).
    /// `RaftHandle::add_voter` proposes this together with making the member a Raft voter.
    AddMember(Member),
    /// Marks the member Removed and moves its actors; a no-op for unknown or removed ids, so a
    /// removal can be retried.
    RemoveMember {
        id: NodeId,
    },
    /// Drain (`Draining`), declare dead (`Failed`) or reactivate (`Active`) a member; leaving
    /// Active moves its actors, returning to it places only actors without a home.
    SetMemberStatus {
        id: NodeId,
        status: MemberStatus,
    },
    /// Sets a configuration document. For an actor key, a new actor (or one whose preferred site
    /// changed) is placed at once.
    PutConfig {
        key: String,
        value: Vec<u8>,
        preferred_site: Option<String>,
    },
    /// Deletes a configuration document (and the actor's placement).
    DeleteConfig {
        key: String,
    },
    /// Recomputes every actor's home over the active members, e.g. after members joined.
    Rebalance,
    Noop,
}

/// What an applied command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Actors whose home changed.
    pub moved: usize,
}

/// Why a command was rejected; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("node id 0 is not a valid member id")]
    InvalidMemberId,
    #[error("member {0} is unknown")]
    UnknownMember(NodeId),
    #[error("member {0} was removed; add it again instead")]
    MemberRemoved(NodeId),
    #[error("configuration key must not be empty")]
    EmptyKey,
}

pub type ApplyResult = Result<Applied, ApplyError>;

/// A command or state that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty {0}")]
    Empty(&'static str),
    #[error("unknown {what} encoding version {version}")]
    Version { what: &'static str, version: u8 },
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode {what}: {reason}")]
pub struct EncodeError {
    what: &'static str,
    reason: String,
}

impl Command {
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        encode(COMMAND_VERSION, "command", self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let payload = versioned(bytes, COMMAND_VERSION, "command")?;
        rkyv::from_bytes::<Command, rancor::Error>(&payload).map_err(|e| DecodeError::Invalid {
            what: "command",
            reason: e.to_string(),
        })
    }
}

impl ClusterState {
    /// Encodes the state as snapshot data.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        encode(STATE_VERSION, "cluster state", self)
    }

    /// Decodes snapshot data.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let payload = versioned(bytes, STATE_VERSION, "cluster state")?;
        rkyv::from_bytes::<ClusterState, rancor::Error>(&payload).map_err(|e| {
            DecodeError::Invalid {
                what: "cluster state",
                reason: e.to_string(),
            }
        })
    }

    /// Members that host actors.
    pub fn active_members(&self) -> impl Iterator<Item = &Member> {
        self.members
            .values()
            .filter(|m| m.status == MemberStatus::Active)
    }

    /// Applies the committed command at log `index`. Deterministic: same state and command give
    /// the same result on every replica.
    pub fn apply(&mut self, index: u64, command: &Command) -> ApplyResult {
        match command {
            Command::AddMember(member) => self.add_member(index, member),
            Command::RemoveMember { id } => self.set_status(index, *id, MemberStatus::Removed),
            Command::SetMemberStatus { id, status } => self.set_status(index, *id, *status),
            Command::PutConfig {
                key,
                value,
                preferred_site,
            } => self.put_config(key, value, preferred_site.as_deref()),
            Command::DeleteConfig { key } => Ok(self.delete_config(key)),
            Command::Rebalance => {
                let keys: Vec<ActorKey> = self.actor_keys().collect();
                Ok(self.place(keys, true))
            }
            Command::Noop => Ok(Applied { moved: 0 }),
        }
    }

    fn add_member(&mut self, index: u64, member: &Member) -> ApplyResult {
        if member.id == 0 {
            return Err(ApplyError::InvalidMemberId);
        }
        match self.members.get_mut(&member.id) {
            Some(existing) if existing.status != MemberStatus::Removed => {
                existing.name.clone_from(&member.name);
                existing.site.clone_from(&member.site);
                existing.raft_addr.clone_from(&member.raft_addr);
                existing.sip_addr.clone_from(&member.sip_addr);
                existing.http_addr.clone_from(&member.http_addr);
                return Ok(Applied { moved: 0 });
            }
            _ => {}
        }
        let mut member = member.clone();
        member.status = MemberStatus::Active;
        member.joined_at_index = index;
        self.members.insert(member.id, member);
        Ok(self.place_homeless())
    }

    fn set_status(&mut self, index: u64, id: NodeId, status: MemberStatus) -> ApplyResult {
        let member = match self.members.get_mut(&id) {
            Some(member) => member,
            None if status == MemberStatus::Removed => return Ok(Applied { moved: 0 }),
            None => return Err(ApplyError::UnknownMember(id)),
        };
        if member.status == MemberStatus::Removed {
            // Removing twice is a no-op, so a retried removal succeeds.
            return if status == MemberStatus::Removed {
                Ok(Applied { moved: 0 })
            } else {
                Err(ApplyError::MemberRemoved(id))
            };
        }
        let was = std::mem::replace(&mut member.status, status);
        if was == MemberStatus::Failed && status == MemberStatus::Active {
            // A new tenure: the member learns from it that it was declared failed, even if it
            // never saw the Failed state itself, and lets go of what it held.
            member.joined_at_index = index;
        }
        Ok(match (was, status) {
            (MemberStatus::Active, MemberStatus::Active) => Applied { moved: 0 },
            // Back from Draining or Failed: only homeless actors are placed; nothing moves back.
            (_, MemberStatus::Active) => self.place_homeless(),
            // Leaving Active (drained, declared failed, removed) moves what it hosted. A member
            // that is not Active hosts nothing (placement only picks active members), so the
            // other transitions (Draining -> Failed, Failed -> Removed, ...) move nothing.
            (MemberStatus::Active, _) => {
                let hosted: Vec<ActorKey> = self
                    .placement
                    .iter()
                    .filter(|(_, p)| p.node == id)
                    .map(|(k, _)| k.clone())
                    .collect();
                self.place(hosted, true)
            }
            (
                MemberStatus::Draining | MemberStatus::Failed | MemberStatus::Removed,
                MemberStatus::Draining | MemberStatus::Failed | MemberStatus::Removed,
            ) => Applied { moved: 0 },
        })
    }

    /// The home `key` would get if its current home stopped being active: the placement over
    /// the active members other than the current home, with the actor's site affinity. `None`
    /// when the actor is not placed or no other active member exists. An agent actor replicates
    /// its state to this node, which is where it moves if its home fails.
    pub fn heir(&self, key: &ActorKey) -> Option<NodeId> {
        let home = self.placement.get(key)?.node;
        let candidates: Vec<Candidate<'_>> = self
            .active_members()
            .filter(|m| m.id != home)
            .map(|m| Candidate {
                id: m.id,
                site: &m.site,
            })
            .collect();
        placement::home(&candidates, key, self.affinity.get(key).map(String::as_str))
    }

    /// The standby nodes for call `call_id` owned by `owner`, in take-over order: a rendezvous
    /// pick among the active members of `owner`'s site (a node loss is then taken over locally),
    /// then one among the active members of the other sites (so a site loss is survived too).
    /// One entry when every other active member is on one side; none when no other member is
    /// active. Deterministic.
    pub fn call_standbys(&self, owner: NodeId, call_id: &str) -> Vec<NodeId> {
        let owner_site = self.members.get(&owner).map(|m| m.site.as_str());
        let candidates = |same_site: bool| -> Vec<Candidate<'_>> {
            self.active_members()
                .filter(|m| m.id != owner && (Some(m.site.as_str()) == owner_site) == same_site)
                .map(|m| Candidate {
                    id: m.id,
                    site: &m.site,
                })
                .collect()
        };
        [true, false]
            .into_iter()
            .filter_map(|same_site| placement::standby(&candidates(same_site), call_id, None))
            .collect()
    }

    fn put_config(&mut self, key: &str, value: &[u8], site: Option<&str>) -> ApplyResult {
        if key.is_empty() {
            return Err(ApplyError::EmptyKey);
        }
        self.config.insert(key.to_owned(), value.to_vec());
        self.config_revision += 1;
        let Some(actor) = ActorKey::from_config_key(key) else {
            return Ok(Applied { moved: 0 });
        };
        let site_changed = match site {
            Some(site) => {
                self.affinity
                    .insert(actor.clone(), site.to_owned())
                    .as_deref()
                    != Some(site)
            }
            None => self.affinity.remove(&actor).is_some(),
        };
        let force = site_changed || !self.placement.contains_key(&actor);
        Ok(self.place([actor], force))
    }

    fn delete_config(&mut self, key: &str) -> Applied {
        if self.config.remove(key).is_none() {
            return Applied { moved: 0 };
        }
        self.config_revision += 1;
        let mut moved = 0;
        if let Some(actor) = ActorKey::from_config_key(key) {
            self.affinity.remove(&actor);
            if self.placement.remove(&actor).is_some() {
                moved = 1;
                self.placement_epoch += 1;
            }
        }
        Applied { moved }
    }

    fn actor_keys(&self) -> impl Iterator<Item = ActorKey> + '_ {
        self.config
            .keys()
            .filter_map(|k| ActorKey::from_config_key(k))
    }

    fn place_homeless(&mut self) -> Applied {
        let homeless: Vec<ActorKey> = self
            .actor_keys()
            .filter(|k| !self.placement.contains_key(k))
            .collect();
        self.place(homeless, false)
    }

    /// Recomputes the home of `keys` (only of those without a valid home unless `force`),
    /// bumping the epoch once if anything moved.
    fn place(&mut self, keys: impl IntoIterator<Item = ActorKey>, force: bool) -> Applied {
        let candidates: Vec<Candidate<'_>> = self
            .active_members()
            .map(|m| Candidate {
                id: m.id,
                site: &m.site,
            })
            .collect();
        let mut changes = Vec::new();
        for key in keys {
            let current = self.placement.get(&key).map(|p| p.node);
            if !force && current.is_some_and(|n| candidates.iter().any(|c| c.id == n)) {
                continue;
            }
            let target = placement::home(
                &candidates,
                &key,
                self.affinity.get(&key).map(String::as_str),
            );
            if target != current {
                changes.push((key, target));
            }
        }
        if changes.is_empty() {
            return Applied { moved: 0 };
        }
        self.placement_epoch += 1;
        let epoch = self.placement_epoch;
        let moved = changes.len();
        for (key, target) in changes {
            match target {
                Some(node) => {
                    self.placement.insert(key, Placement { node, epoch });
                }
                // No active member left: the actor has no home until one appears.
                None => {
                    self.placement.remove(&key);
                }
            }
        }
        Applied { moved }
    }
}

fn encode<T>(version: u8, what: &'static str, value: &T) -> Result<Vec<u8>, EncodeError>
where
    T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rancor::Error,
            >,
        >,
{
    let body = rkyv::to_bytes::<rancor::Error>(value).map_err(|e| EncodeError {
        what,
        reason: e.to_string(),
    })?;
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(version);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Strips and checks the version byte, and copies the rest into an aligned buffer: the bytes come
/// from protobuf fields and disk with no alignment guarantee, which rkyv requires.
fn versioned(bytes: &[u8], version: u8, what: &'static str) -> Result<AlignedVec, DecodeError> {
    let (&found, rest) = bytes.split_first().ok_or(DecodeError::Empty(what))?;
    if found != version {
        return Err(DecodeError::Version {
            what,
            version: found,
        });
    }
    let mut aligned = AlignedVec::with_capacity(rest.len());
    aligned.extend_from_slice(rest);
    Ok(aligned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: NodeId, site: &str) -> Member {
        Member {
            id,
            name: format!("node{id}"),
            site: site.into(),
            raft_addr: format!("127.0.0.1:{}", 7000 + id),
            sip_addr: format!("127.0.0.1:{}", 5060 + id),
            http_addr: format!("127.0.0.1:{}", 8080 + id),
            status: MemberStatus::Draining,
            joined_at_index: 0,
        }
    }

    fn put(key: &str) -> Command {
        Command::PutConfig {
            key: key.into(),
            value: key.as_bytes().to_vec(),
            preferred_site: None,
        }
    }

    fn three_nodes_with_queues(n: usize) -> ClusterState {
        let mut s = ClusterState::default();
        let mut index = 1;
        for id in 1..=3 {
            index += 1;
            s.apply(index, &Command::AddMember(member(id, "dc1")))
                .unwrap();
        }
        for q in 0..n {
            index += 1;
            s.apply(index, &put(&format!("queue/q{q}"))).unwrap();
        }
        s
    }

    #[test]
    fn add_member_sets_active_and_join_index() {
        let mut s = ClusterState::default();
        s.apply(7, &Command::AddMember(member(1, "dc1"))).unwrap();
        assert_eq!(s.members[&1].status, MemberStatus::Active);
        assert_eq!(s.members[&1].joined_at_index, 7);
        // Re-adding updates addresses but keeps the join index.
        let mut m = member(1, "dc2");
        m.sip_addr = "10.0.0.1:5060".into();
        s.apply(9, &Command::AddMember(m)).unwrap();
        assert_eq!(s.members[&1].joined_at_index, 7);
        assert_eq!(s.members[&1].sip_addr, "10.0.0.1:5060");
        assert_eq!(
            s.apply(10, &Command::AddMember(member(0, "dc1"))),
            Err(ApplyError::InvalidMemberId)
        );
    }

    #[test]
    fn config_puts_place_actors_and_count_revisions() {
        let mut s = three_nodes_with_queues(30);
        assert_eq!(s.placement.len(), 30);
        assert_eq!(s.config_revision, 30);
        s.apply(100, &put("did/1000")).unwrap();
        assert_eq!(s.placement.len(), 30, "a DID is not an actor");
        s.apply(
            101,
            &Command::DeleteConfig {
                key: "queue/q0".into(),
            },
        )
        .unwrap();
        assert!(!s.placement.contains_key(&ActorKey::queue("q0")));
        assert_eq!(s.config_revision, 32);
        // Deleting a missing key changes nothing.
        s.apply(
            102,
            &Command::DeleteConfig {
                key: "queue/q0".into(),
            },
        )
        .unwrap();
        assert_eq!(s.config_revision, 32);
        assert_eq!(s.apply(103, &put("")), Err(ApplyError::EmptyKey));
    }

    #[test]
    fn drain_and_remove_move_actors_and_bump_epoch() {
        let mut s = three_nodes_with_queues(60);
        let epoch = s.placement_epoch;
        let drained = s
            .apply(
                200,
                &Command::SetMemberStatus {
                    id: 2,
                    status: MemberStatus::Draining,
                },
            )
            .unwrap();
        assert!(drained.moved > 0);
        assert!(s.placement.values().all(|p| p.node != 2));
        assert_eq!(s.placement_epoch, epoch + 1);
        assert!(
            s.placement
                .values()
                .filter(|p| p.epoch == epoch + 1)
                .count()
                == drained.moved
        );

        s.apply(201, &Command::RemoveMember { id: 3 }).unwrap();
        assert!(s.placement.values().all(|p| p.node == 1));
        assert_eq!(
            s.apply(
                202,
                &Command::SetMemberStatus {
                    id: 3,
                    status: MemberStatus::Active
                }
            ),
            Err(ApplyError::MemberRemoved(3))
        );
        assert_eq!(
            s.apply(
                203,
                &Command::SetMemberStatus {
                    id: 9,
                    status: MemberStatus::Draining
                }
            ),
            Err(ApplyError::UnknownMember(9))
        );
        // Removal is idempotent.
        assert_eq!(
            s.apply(203, &Command::RemoveMember { id: 9 }),
            Ok(Applied { moved: 0 })
        );
        assert_eq!(
            s.apply(203, &Command::RemoveMember { id: 3 }),
            Ok(Applied { moved: 0 })
        );
        // Last active member drained: actors have no home, and get one back on reactivation.
        s.apply(
            204,
            &Command::SetMemberStatus {
                id: 1,
                status: MemberStatus::Draining,
            },
        )
        .unwrap();
        assert!(s.placement.is_empty());
        s.apply(
            205,
            &Command::SetMemberStatus {
                id: 2,
                status: MemberStatus::Active,
            },
        )
        .unwrap();
        assert_eq!(s.placement.len(), 60);
        assert!(s.placement.values().all(|p| p.node == 2));
    }

    fn set(s: &mut ClusterState, index: u64, id: NodeId, status: MemberStatus) -> ApplyResult {
        s.apply(index, &Command::SetMemberStatus { id, status })
    }

    fn hosted_by(s: &ClusterState, id: NodeId) -> Vec<ActorKey> {
        s.placement
            .iter()
            .filter(|(_, p)| p.node == id)
            .map(|(k, _)| k.clone())
            .collect()
    }

    #[test]
    fn failing_an_active_member_moves_its_actors_like_draining() {
        let mut failed = three_nodes_with_queues(60);
        let mut drained = failed.clone();
        let epoch = failed.placement_epoch;
        let hosted = hosted_by(&failed, 2);
        assert!(!hosted.is_empty());
        let applied = set(&mut failed, 200, 2, MemberStatus::Failed).unwrap();
        set(&mut drained, 200, 2, MemberStatus::Draining).unwrap();
        assert_eq!(applied.moved, hosted.len());
        assert_eq!(failed.members[&2].status, MemberStatus::Failed);
        assert_eq!(failed.placement, drained.placement, "same moves as a drain");
        assert_eq!(failed.placement_epoch, epoch + 1);
        assert!(hosted_by(&failed, 2).is_empty());
        assert_eq!(failed.placement.len(), 60);
        assert!(failed.active_members().all(|m| m.id != 2));
        // Failing again changes nothing.
        let before = failed.clone();
        assert_eq!(
            set(&mut failed, 201, 2, MemberStatus::Failed),
            Ok(Applied { moved: 0 })
        );
        assert_eq!(failed, before);
    }

    #[test]
    fn failing_a_draining_member_moves_nothing() {
        let mut s = three_nodes_with_queues(30);
        set(&mut s, 200, 3, MemberStatus::Draining).unwrap();
        let before = s.clone();
        assert_eq!(
            set(&mut s, 201, 3, MemberStatus::Failed),
            Ok(Applied { moved: 0 })
        );
        assert_eq!(s.members[&3].status, MemberStatus::Failed);
        assert_eq!(s.placement, before.placement);
        assert_eq!(s.placement_epoch, before.placement_epoch);
    }

    #[test]
    fn a_failed_member_returns_active_without_taking_anything_back() {
        let mut s = three_nodes_with_queues(60);
        set(&mut s, 200, 2, MemberStatus::Failed).unwrap();
        let after_failure = s.placement.clone();
        let epoch = s.placement_epoch;
        assert_eq!(
            set(&mut s, 201, 2, MemberStatus::Active),
            Ok(Applied { moved: 0 })
        );
        assert_eq!(s.members[&2].status, MemberStatus::Active);
        assert_eq!(s.placement, after_failure, "nothing moves back on its own");
        assert_eq!(s.placement_epoch, epoch);
        // It takes new actors again, and its share back only on a rebalance.
        s.apply(202, &put("queue/new")).unwrap();
        assert!(s.apply(203, &Command::Rebalance).unwrap().moved > 0);
        assert!(!hosted_by(&s, 2).is_empty());
    }

    #[test]
    fn failed_to_active_places_homeless_actors() {
        let mut s = three_nodes_with_queues(20);
        set(&mut s, 200, 1, MemberStatus::Failed).unwrap();
        set(&mut s, 201, 2, MemberStatus::Failed).unwrap();
        set(&mut s, 202, 3, MemberStatus::Failed).unwrap();
        assert!(s.placement.is_empty(), "no active member left");
        set(&mut s, 203, 3, MemberStatus::Active).unwrap();
        assert_eq!(s.placement.len(), 20);
        assert!(s.placement.values().all(|p| p.node == 3));
    }

    #[test]
    fn a_failed_member_can_be_removed_drained_and_not_revived_once_removed() {
        let mut s = three_nodes_with_queues(30);
        set(&mut s, 200, 2, MemberStatus::Failed).unwrap();
        let placement = s.placement.clone();
        assert_eq!(
            s.apply(201, &Command::RemoveMember { id: 2 }),
            Ok(Applied { moved: 0 })
        );
        assert_eq!(s.members[&2].status, MemberStatus::Removed);
        assert_eq!(s.placement, placement);
        assert_eq!(
            set(&mut s, 202, 2, MemberStatus::Failed),
            Err(ApplyError::MemberRemoved(2))
        );
        assert_eq!(
            set(&mut s, 203, 9, MemberStatus::Failed),
            Err(ApplyError::UnknownMember(9))
        );
        set(&mut s, 204, 3, MemberStatus::Failed).unwrap();
        assert_eq!(
            set(&mut s, 205, 3, MemberStatus::Draining),
            Ok(Applied { moved: 0 })
        );
        assert_eq!(s.members[&3].status, MemberStatus::Draining);
    }

    #[test]
    fn heir_is_where_an_actor_goes_when_its_home_fails() {
        let mut s = three_nodes_with_queues(60);
        s.apply(100, &Command::AddMember(member(4, "dc2"))).unwrap();
        s.apply(101, &Command::Rebalance).unwrap();
        for id in ["2001", "2002", "2003", "2004"] {
            s.apply(
                102,
                &Command::PutConfig {
                    key: format!("agent/{id}"),
                    value: vec![1],
                    preferred_site: Some("dc1".into()),
                },
            )
            .unwrap();
        }
        let heirs: BTreeMap<ActorKey, Option<NodeId>> =
            s.placement.keys().map(|k| (k.clone(), s.heir(k))).collect();
        for (key, heir) in &heirs {
            let home = s.placement[key].node;
            let heir = heir.unwrap_or_else(|| panic!("{key} has no heir"));
            assert_ne!(heir, home, "{key}");
            if key.kind == ActorKind::Agent {
                assert_ne!(heir, 4, "{key}: the heir honours the site affinity");
            }
        }
        // Failing a home moves each of its actors exactly to its heir.
        let home_of_q0 = s.placement[&ActorKey::queue("q0")].node;
        let hosted = hosted_by(&s, home_of_q0);
        set(&mut s, 103, home_of_q0, MemberStatus::Failed).unwrap();
        for key in hosted {
            assert_eq!(Some(s.placement[&key].node), heirs[&key], "{key}");
        }
        assert_eq!(s.heir(&ActorKey::queue("missing")), None);
        // A single active member has no heir.
        let mut lone = three_nodes_with_queues(5);
        set(&mut lone, 200, 2, MemberStatus::Failed).unwrap();
        set(&mut lone, 201, 3, MemberStatus::Draining).unwrap();
        assert_eq!(lone.heir(&ActorKey::queue("q0")), None);
    }

    #[test]
    fn call_standbys_are_one_on_the_owners_site_and_one_elsewhere() {
        let mut s = three_nodes_with_queues(0);
        s.apply(10, &Command::AddMember(member(4, "dc2"))).unwrap();
        s.apply(11, &Command::AddMember(member(5, "dc2"))).unwrap();
        let calls: Vec<String> = (0..200).map(|i| format!("{i}@pbx")).collect();
        let mut seen = BTreeMap::new();
        for call in &calls {
            let standbys = s.call_standbys(1, call);
            assert!(
                matches!(standbys[..], [2 | 3, 4 | 5]),
                "{call}: {standbys:?}"
            );
            assert_eq!(s.call_standbys(1, call), standbys, "deterministic");
            *seen.entry(standbys[0]).or_insert(0) += 1;
            assert!(matches!(s.call_standbys(4, call)[..], [5, 1..=3]));
        }
        assert_eq!(seen.len(), 2, "spread over the site: {seen:?}");
        // The only other member of the site fails: the other sites only.
        set(&mut s, 12, 5, MemberStatus::Failed).unwrap();
        for call in &calls {
            assert!(matches!(s.call_standbys(4, call)[..], [1..=3]), "{call}");
        }
        // Nobody else active: no standby.
        for id in [1, 2, 3] {
            set(&mut s, 13, id, MemberStatus::Draining).unwrap();
        }
        assert!(s.call_standbys(4, "x@pbx").is_empty());
        // An unknown owner still gets a standby among the active members.
        assert_eq!(s.call_standbys(99, "x@pbx"), vec![4]);
    }

    #[test]
    fn joins_move_nothing_until_rebalance() {
        let mut s = three_nodes_with_queues(100);
        let before = s.placement.clone();
        s.apply(300, &Command::AddMember(member(4, "dc1"))).unwrap();
        assert_eq!(s.placement, before);
        let moved = s.apply(301, &Command::Rebalance).unwrap().moved;
        assert!(moved > 0);
        assert!(s.placement.values().any(|p| p.node == 4));
        // A second rebalance finds nothing to do and keeps the epoch.
        let epoch = s.placement_epoch;
        assert_eq!(s.apply(302, &Command::Rebalance).unwrap().moved, 0);
        assert_eq!(s.placement_epoch, epoch);
    }

    #[test]
    fn preferred_site_is_honoured() {
        let mut s = three_nodes_with_queues(0);
        s.apply(10, &Command::AddMember(member(4, "eu"))).unwrap();
        s.apply(
            11,
            &Command::PutConfig {
                key: "agent/2001".into(),
                value: vec![1],
                preferred_site: Some("eu".into()),
            },
        )
        .unwrap();
        assert_eq!(s.placement[&ActorKey::agent("2001")].node, 4);
        // Dropping the preference re-places the actor over all members.
        s.apply(12, &put("agent/2001")).unwrap();
        assert!(!s.affinity.contains_key(&ActorKey::agent("2001")));
    }

    #[test]
    fn same_commands_same_state() {
        let a = three_nodes_with_queues(50);
        let b = three_nodes_with_queues(50);
        assert_eq!(a, b);
        assert_eq!(a.encode().unwrap(), b.encode().unwrap());
    }

    #[test]
    fn command_and_state_round_trip() {
        let commands = [
            Command::AddMember(member(5, "dc9")),
            Command::RemoveMember { id: 5 },
            Command::SetMemberStatus {
                id: 5,
                status: MemberStatus::Draining,
            },
            Command::SetMemberStatus {
                id: 5,
                status: MemberStatus::Failed,
            },
            Command::PutConfig {
                key: "queue/x".into(),
                value: vec![0, 1, 2],
                preferred_site: Some("eu".into()),
            },
            Command::DeleteConfig {
                key: "queue/x".into(),
            },
            Command::Rebalance,
            Command::Noop,
        ];
        for c in commands {
            assert_eq!(Command::decode(&c.encode().unwrap()).unwrap(), c);
        }
        let s = three_nodes_with_queues(10);
        assert_eq!(ClusterState::decode(&s.encode().unwrap()).unwrap(), s);
    }

    #[test]
    fn corrupt_or_unknown_encodings_are_errors() {
        assert_eq!(Command::decode(&[]), Err(DecodeError::Empty("command")));
        let mut bytes = Command::Rebalance.encode().unwrap();
        bytes[0] = 99;
        assert!(matches!(
            Command::decode(&bytes),
            Err(DecodeError::Version { version: 99, .. })
        ));
        let good = put("queue/abc").encode().unwrap();
        // Every truncation and a sweep of bit flips must be rejected or decode, never panic.
        for len in 0..good.len() {
            let _ = Command::decode(&good[..len]);
        }
        for i in 1..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            let _ = Command::decode(&bad);
        }
        assert!(Command::decode(&[COMMAND_VERSION, 1, 2, 3]).is_err());
        assert!(ClusterState::decode(&[STATE_VERSION, 0xde, 0xad]).is_err());
    }

    #[test]
    fn actor_keys_parse() {
        assert_eq!(
            ActorKey::from_config_key("queue/support"),
            Some(ActorKey::queue("support"))
        );
        assert_eq!(
            ActorKey::from_config_key("agent/2001"),
            Some(ActorKey::agent("2001"))
        );
        assert_eq!(ActorKey::from_config_key("queue/"), None);
        assert_eq!(ActorKey::from_config_key("did/1000"), None);
        assert_eq!(ActorKey::agent("2001").to_string(), "agent/2001");
    }
}
