//! Raft group ids: three meta groups, `user_shards` user-data groups and `shared_shards`
//! shared-data groups. A group id is a `u32` so it fits a fixed-size key prefix.

use std::fmt;

/// The meta groups. Their order is part of the on-disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetaGroup {
    /// Namespaces, tables and columns.
    Catalog,
    /// Users and roles.
    Users,
    /// Background jobs (flushes, compactions).
    Jobs,
}

impl MetaGroup {
    pub const ALL: [MetaGroup; 3] = [MetaGroup::Catalog, MetaGroup::Users, MetaGroup::Jobs];

    pub fn name(self) -> &'static str {
        match self {
            MetaGroup::Catalog => "catalog",
            MetaGroup::Users => "users",
            MetaGroup::Jobs => "jobs",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupId {
    Meta(MetaGroup),
    UserShard(u16),
    SharedShard(u16),
}

const USER_BASE: u32 = 0x0001_0000;
const SHARED_BASE: u32 = 0x0002_0000;

impl GroupId {
    pub fn to_u32(self) -> u32 {
        match self {
            GroupId::Meta(MetaGroup::Catalog) => 0,
            GroupId::Meta(MetaGroup::Users) => 1,
            GroupId::Meta(MetaGroup::Jobs) => 2,
            GroupId::UserShard(i) => USER_BASE + u32::from(i),
            GroupId::SharedShard(i) => SHARED_BASE + u32::from(i),
        }
    }

    pub fn from_u32(v: u32) -> Option<GroupId> {
        match v {
            0 => Some(GroupId::Meta(MetaGroup::Catalog)),
            1 => Some(GroupId::Meta(MetaGroup::Users)),
            2 => Some(GroupId::Meta(MetaGroup::Jobs)),
            v if (USER_BASE..USER_BASE + 0x1_0000).contains(&v) => Some(GroupId::UserShard((v - USER_BASE) as u16)),
            v if (SHARED_BASE..SHARED_BASE + 0x1_0000).contains(&v) => {
                Some(GroupId::SharedShard((v - SHARED_BASE) as u16))
            }
            _ => None,
        }
    }

    /// The fixed-size key prefix of everything this group stores.
    pub fn prefix(self) -> [u8; 4] {
        self.to_u32().to_be_bytes()
    }

    /// Parse the display form back ("meta:catalog", "user:3", "shared:0").
    pub fn parse(s: &str) -> Option<GroupId> {
        let (kind, rest) = s.split_once(':')?;
        match kind {
            "meta" => MetaGroup::ALL.into_iter().find(|m| m.name() == rest).map(GroupId::Meta),
            "user" => rest.parse().ok().map(GroupId::UserShard),
            "shared" => rest.parse().ok().map(GroupId::SharedShard),
            _ => None,
        }
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupId::Meta(m) => write!(f, "meta:{}", m.name()),
            GroupId::UserShard(i) => write!(f, "user:{i}"),
            GroupId::SharedShard(i) => write!(f, "shared:{i}"),
        }
    }
}

/// Upper bound on shards of one kind: the group id reserves 16 bits for the shard index.
pub const SHARDS_MAX: u16 = 4096;

/// The groups of a cluster: fixed meta groups plus the configured data shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLayout {
    pub user_shards: u16,
    pub shared_shards: u16,
}

impl GroupLayout {
    pub fn new(user_shards: u16, shared_shards: u16) -> GroupLayout {
        assert!((1..=SHARDS_MAX).contains(&user_shards));
        assert!((1..=SHARDS_MAX).contains(&shared_shards));
        GroupLayout { user_shards, shared_shards }
    }

    pub fn all(&self) -> Vec<GroupId> {
        let mut groups: Vec<GroupId> = MetaGroup::ALL.into_iter().map(GroupId::Meta).collect();
        groups.extend((0..self.user_shards).map(GroupId::UserShard));
        groups.extend((0..self.shared_shards).map(GroupId::SharedShard));
        groups
    }

    /// The user shard that owns a user's rows: a stable hash of the user id.
    pub fn user_shard(&self, user_id: &str) -> GroupId {
        GroupId::UserShard((stable_hash(user_id.as_bytes()) % u64::from(self.user_shards)) as u16)
    }

    /// The shared shard that owns a shared table's rows.
    pub fn shared_shard(&self, table_id: u64) -> GroupId {
        GroupId::SharedShard((stable_hash(&table_id.to_be_bytes()) % u64::from(self.shared_shards)) as u16)
    }

    /// Where a table's rows live for a caller: one group and one scope. A SHARED table lives
    /// in its shared shard with no scope; USER and STREAM tables in the caller's user shard,
    /// scoped by the caller's user id.
    pub fn table_location(&self, def: &crate::command::TableDef, user_id: &str) -> (GroupId, String) {
        use crate::command::TableType;
        match def.table_type {
            TableType::Shared => (self.shared_shard(def.table_id), String::new()),
            TableType::User | TableType::Stream => (self.user_shard(user_id), user_id.to_string()),
        }
    }

    /// Every group that may hold rows of a table: its shared shard, or all user shards.
    pub fn table_groups(&self, def: &crate::command::TableDef) -> Vec<GroupId> {
        use crate::command::TableType;
        match def.table_type {
            TableType::Shared => vec![self.shared_shard(def.table_id)],
            TableType::User | TableType::Stream => (0..self.user_shards).map(GroupId::UserShard).collect(),
        }
    }
}

/// FNV-1a: stable across processes, versions and platforms (std's hasher is not).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_round_trip() {
        let layout = GroupLayout::new(32, 2);
        for g in layout.all() {
            assert_eq!(GroupId::from_u32(g.to_u32()), Some(g));
            assert_eq!(GroupId::parse(&g.to_string()), Some(g));
        }
        assert_eq!(layout.all().len(), 3 + 32 + 2);
        assert_eq!(GroupLayout::new(4, 1).all().len(), 8);
    }

    #[test]
    fn user_shard_is_stable() {
        let layout = GroupLayout::new(4, 1);
        assert_eq!(layout.user_shard("alice"), layout.user_shard("alice"));
        // Published FNV-1a 64-bit test vectors: the hash must never change, shard routing is on disk.
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
