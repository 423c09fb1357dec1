//! `CLUSTER ...` statements, parsed from tokens: leadership moves (KalamDB's spellings and
//! ours). The node carries them out; see `engine/cluster.rs`.

use datafusion::sql::sqlparser::tokenizer::Token;
use kalamdb_log::GroupId;

use super::source::Cursor;
use super::{ClusterCommand, Statement};
use crate::error::{Error, Result};

/// Largest node id (the config's bound on `server.node_id`).
const NODE_ID_MAX: u64 = 1023;

/// `CLUSTER JOIN <node> '<raft host:port>' '<http host:port>'` (KalamDB's order),
/// `CLUSTER REMOVE [NODE] <node>`, `CLUSTER TRANSFER-LEADER <node>` (KalamDB: every group to
/// that node),
/// `CLUSTER TRANSFER LEADER [<group> | ALL] TO [NODE] <node>`, `CLUSTER STEPDOWN` /
/// `STEP-DOWN` (this node hands its groups away), `CLUSTER REBALANCE`. The cursor is past
/// `CLUSTER`.
pub(super) fn parse_cluster(c: &mut Cursor<'_, '_>) -> Result<Statement> {
    let command = if c.eat_kw("TRANSFER") {
        if c.eat(&Token::Minus) {
            if !c.eat_kw("LEADER") {
                return Err(c.unexpected("LEADER"));
            }
            ClusterCommand::TransferLeader { group: None, to: node_id(c)? }
        } else {
            if !c.eat_kw("LEADER") {
                return Err(c.unexpected("LEADER"));
            }
            let group = if c.eat_kw("ALL") || c.peek_kw("TO") { None } else { Some(group(c)?) };
            if !c.eat_kw("TO") {
                return Err(c.unexpected("TO"));
            }
            let _ = c.eat_kw("NODE");
            ClusterCommand::TransferLeader { group, to: node_id(c)? }
        }
    } else if c.eat_kw("STEPDOWN") {
        ClusterCommand::StepDown
    } else if c.eat_kw("STEP") {
        let _ = c.eat(&Token::Minus);
        if !c.eat_kw("DOWN") {
            return Err(c.unexpected("DOWN"));
        }
        ClusterCommand::StepDown
    } else if c.eat_kw("REBALANCE") {
        ClusterCommand::Rebalance
    } else if c.eat_kw("JOIN") {
        let node = node_id(c)?;
        let raft_addr = address(c, "its Raft address")?;
        let http_addr = address(c, "its HTTP address")?;
        ClusterCommand::Join { node, raft_addr, http_addr }
    } else if c.eat_kw("REMOVE") || c.eat_kw("LEAVE") {
        let _ = c.eat_kw("NODE");
        ClusterCommand::RemoveNode { node: node_id(c)? }
    } else {
        return Err(c.unexpected("TRANSFER-LEADER, TRANSFER LEADER, STEPDOWN, REBALANCE, JOIN or REMOVE NODE"));
    };
    c.expect_end()?;
    Ok(Statement::Cluster(command))
}

fn node_id(c: &mut Cursor<'_, '_>) -> Result<u64> {
    match c.next() {
        Some(Token::Number(n, _)) => match n.parse::<u64>() {
            Ok(id) if (1..=NODE_ID_MAX).contains(&id) => Ok(id),
            _ => Err(Error::InvalidSql(format!("a node id is a number in 1..={NODE_ID_MAX}, got {n}"))),
        },
        _ => Err(Error::InvalidSql("expected a node id (a number)".into())),
    }
}

/// A group by name (`'shared:0'`, `'meta:catalog'`) or by KalamDB's number (`65536`).
fn group(c: &mut Cursor<'_, '_>) -> Result<GroupId> {
    let found = match c.next() {
        Some(Token::SingleQuotedString(s)) => GroupId::parse(&s).ok_or(s),
        Some(Token::Number(n, _)) => n.parse::<u32>().ok().and_then(GroupId::from_u32).ok_or(n),
        _ => return Err(Error::InvalidSql("expected a group ('shared:0', 'meta:catalog') or ALL".into())),
    };
    found.map_err(|text| {
        Error::InvalidSql(format!("no group '{text}': name one as system.cluster_groups shows it ('user:3', 65539)"))
    })
}

/// Longest `host:port` accepted.
const ADDRESS_BYTES_MAX: usize = 255;

/// A quoted `host:port`.
fn address(c: &mut Cursor<'_, '_>, what: &str) -> Result<String> {
    match c.next() {
        Some(Token::SingleQuotedString(s))
            if s.len() <= ADDRESS_BYTES_MAX
                && s.rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
                && !s.chars().any(|ch| ch.is_whitespace() || ch.is_control() || ch == '/') =>
        {
            Ok(s)
        }
        _ => Err(Error::InvalidSql(format!("expected {what} as a quoted 'host:port'"))),
    }
}
