//! User statements (CREATE/ALTER/DROP USER) and `EXECUTE AS USER`. Users live in the users
//! meta group; only their argon2id hashes enter the log.

use std::sync::Arc;

use kalamdb_log::{Op, OpResult, Role, UserDef};

use super::{Engine, ExecContext, QueryResult, RESERVED_USERNAMES, ROOT_USERNAME, now_micros, users_group};
use crate::access;
use crate::error::{Error, Result};
use crate::parse::{Parsed, Statement, UserChange};
use crate::ports::Proposer;

fn reserved_user(username: &str) -> Result<()> {
    if RESERVED_USERNAMES.contains(&username) {
        return Err(Error::InvalidSql(format!(
            "user '{username}' is built in and cannot be changed with SQL (root's password comes from auth.root_password or KALAMDB_ROOT_PASSWORD)"
        )));
    }
    Ok(())
}

impl Engine {
    /// `EXECUTE AS USER 'name' (<statement>)`: the statement runs with that user's id and role
    /// (its rows, its rights). Only service, dba and system callers may impersonate.
    pub(super) async fn execute_as(
        &self,
        username: String,
        statement: Parsed,
        ctx: &ExecContext,
        proposer: &dyn Proposer,
    ) -> Result<QueryResult> {
        access::require(ctx.role, Role::Service, "EXECUTE AS USER")?;
        // root has no catalog record (its password comes from config), yet KalamDB's CLI `\as
        // root` wraps statements this way; only a system caller passes the role check below.
        let (user_id, role) = if username == ROOT_USERNAME {
            (ROOT_USERNAME.to_owned(), Role::System)
        } else {
            if RESERVED_USERNAMES.contains(&username.as_str()) {
                return Err(Error::InvalidSql(format!("user '{username}' is built in and cannot be impersonated")));
            }
            self.barrier(ctx, users_group()).await?;
            let target = self
                .catalog
                .users
                .get(&username)
                .ok_or_else(|| Error::UserNotFound(format!("User '{username}' does not exist")))?;
            (target.user_id.clone(), target.role)
        };
        if role > ctx.role {
            return Err(Error::PermissionDenied(format!(
                "role '{}' may not execute as user '{username}' of role '{}'",
                ctx.role.name(),
                role.name()
            )));
        }
        let as_user = ExecContext { user_id, role, impersonated_by: Some(ctx.user_id.clone()), ..ctx.clone() };
        Box::pin(self.run(statement, &as_user, proposer)).await
    }

    /// The user `username` as this node knows it once every users-group change committed
    /// before now is applied here.
    pub(super) async fn existing_user(&self, ctx: &ExecContext, username: &str) -> Result<Arc<UserDef>> {
        self.barrier(ctx, users_group()).await?;
        self.catalog.users.get(username).ok_or_else(|| Error::UserNotFound(format!("User '{username}' does not exist")))
    }

    pub(super) async fn user_statement(
        &self,
        stmt: Statement,
        ctx: &ExecContext,
        proposer: &dyn Proposer,
    ) -> Result<QueryResult> {
        match stmt {
            Statement::CreateUser { username, password, role, email, if_not_exists } => {
                access::require(ctx.role, Role::Dba, "CREATE USER")?;
                reserved_user(&username)?;
                let role = role.unwrap_or(Role::User);
                if role == Role::System {
                    access::require(ctx.role, Role::System, "creating a system user")?;
                }
                if let Some(e) = &email
                    && (!e.contains('@') || e.len() > 254)
                {
                    return Err(Error::InvalidSql("EMAIL must be an address like 'name@example.com'".into()));
                }
                crate::password::check_policy(&password)?;
                let password_hash = crate::password::hash_blocking(password).await?;
                let now = now_micros();
                let user = UserDef {
                    user_id: format!("u_{}", self.ids.next_id()),
                    username: username.clone(),
                    password_hash,
                    role,
                    email,
                    created_at_micros: now,
                    updated_at_micros: now,
                };
                match self.propose_ok(proposer, users_group(), Op::CreateUser { user, if_not_exists }).await? {
                    OpResult::Skipped => Ok(QueryResult::message(0, format!("User '{username}' already exists"))),
                    _ => Ok(QueryResult::message(1, format!("User '{username}' created"))),
                }
            }
            Statement::AlterUser { username, change } => {
                reserved_user(&username)?;
                let target = self.existing_user(ctx, &username).await?;
                // Under EXECUTE AS the caller is not the target: it may not change the
                // target's password by borrowing the target's identity.
                let is_self = target.user_id == ctx.user_id && ctx.impersonated_by.is_none();
                let (password_hash, role) = match change {
                    UserChange::Password(p) => {
                        if !is_self {
                            access::require(ctx.role, Role::Dba, "changing another user's password")?;
                        }
                        crate::password::check_policy(&p)?;
                        (Some(crate::password::hash_blocking(p).await?), None)
                    }
                    UserChange::Role(r) => {
                        access::require(ctx.role, Role::Dba, "ALTER USER ... SET ROLE")?;
                        if r == Role::System {
                            access::require(ctx.role, Role::System, "granting the system role")?;
                        }
                        (None, Some(r))
                    }
                };
                if target.role == Role::System && !is_self {
                    access::require(ctx.role, Role::System, "changing a system user")?;
                }
                let op =
                    Op::AlterUser { username: username.clone(), password_hash, role, updated_at_micros: now_micros() };
                self.propose_ok(proposer, users_group(), op).await?;
                Ok(QueryResult::message(1, format!("User '{username}' altered")))
            }
            Statement::DropUser { username, if_exists } => {
                access::require(ctx.role, Role::Dba, "DROP USER")?;
                reserved_user(&username)?;
                self.barrier(ctx, users_group()).await?;
                if let Some(target) = self.catalog.users.get(&username)
                    && target.role == Role::System
                {
                    access::require(ctx.role, Role::System, "dropping a system user")?;
                }
                match self
                    .propose_ok(proposer, users_group(), Op::DropUser { username: username.clone(), if_exists })
                    .await?
                {
                    OpResult::Skipped => Ok(QueryResult::message(0, format!("User '{username}' does not exist"))),
                    _ => Ok(QueryResult::message(1, format!("User '{username}' dropped"))),
                }
            }
            _ => Err(Error::Internal("not a user statement".into())),
        }
    }
}
