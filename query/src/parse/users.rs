//! User statements (CREATE/ALTER/DROP USER) and `EXECUTE AS USER`, parsed from tokens.

use datafusion::sql::sqlparser::tokenizer::Token;
use kalamdb_log::Role;

use super::source::Cursor;
use super::{Statement, USERNAME_BYTES_MAX, UserChange};
use crate::error::{Error, Result};

/// A user name: a quoted string or an identifier (kept as written), 1 to
/// [`USERNAME_BYTES_MAX`] bytes of letters, digits and `_ . @ -`.
fn username(c: &mut Cursor<'_, '_>) -> Result<String> {
    let name = match c.next() {
        Some(Token::SingleQuotedString(s)) => s,
        Some(Token::Word(w)) => w.value,
        Some(t) => return Err(Error::InvalidSql(format!("expected a user name, found '{t}'"))),
        None => return Err(Error::InvalidSql("expected a user name, found end of statement".into())),
    };
    let ok_chars = name.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '@' | '-'));
    if name.is_empty() || name.len() > USERNAME_BYTES_MAX || !ok_chars {
        return Err(Error::InvalidSql(format!(
            "a user name is 1 to {USERNAME_BYTES_MAX} letters, digits or '_', '.', '@', '-'"
        )));
    }
    Ok(name)
}

/// A password literal. Errors never echo what was found: it may be the password.
fn password(c: &mut Cursor<'_, '_>) -> Result<String> {
    match c.next() {
        Some(Token::SingleQuotedString(s)) => Ok(s),
        _ => Err(Error::InvalidSql("PASSWORD takes a single-quoted string".into())),
    }
}

fn role(c: &mut Cursor<'_, '_>) -> Result<Role> {
    let found = match c.next() {
        Some(Token::Word(w)) => w.value,
        Some(Token::SingleQuotedString(s)) => s,
        _ => String::new(),
    };
    Role::parse(&found)
        .ok_or_else(|| Error::InvalidSql(format!("unknown role '{found}': expected user, service, dba or system")))
}

/// CREATE/ALTER/DROP USER and EXECUTE AS USER; `None` when the statement is none of them.
pub(super) fn parse_user_statement(c: &mut Cursor<'_, '_>) -> Result<Option<Statement>> {
    if c.peek_kw("CREATE") && c.peek_kw_at(1, "USER") && !c.peek_kw_at(2, "TABLE") {
        c.pos += 2;
        let if_not_exists = c.eat_kws(&["IF", "NOT", "EXISTS"]);
        let username = username(c)?;
        if !c.eat_kw("WITH") {
            return Err(c.unexpected("WITH PASSWORD"));
        }
        let (mut pw, mut role_given, mut email) = (None, None, None);
        let twice = |what: &str| Err(Error::InvalidSql(format!("CREATE USER: {what} given twice")));
        while !c.at_end() {
            if c.eat_kw("PASSWORD") {
                if pw.is_some() {
                    return twice("PASSWORD");
                }
                pw = Some(password(c)?);
            } else if c.eat_kw("ROLE") {
                if role_given.is_some() {
                    return twice("ROLE");
                }
                role_given = Some(role(c)?);
            } else if c.eat_kw("EMAIL") {
                if email.is_some() {
                    return twice("EMAIL");
                }
                match c.next() {
                    Some(Token::SingleQuotedString(s)) => email = Some(s),
                    _ => return Err(Error::InvalidSql("EMAIL takes a single-quoted string".into())),
                }
            } else {
                // Not `unexpected()`: what follows WITH may be a misplaced password.
                return Err(Error::InvalidSql("CREATE USER ... WITH expects PASSWORD, ROLE or EMAIL".into()));
            }
        }
        let password = pw.ok_or_else(|| Error::InvalidSql("CREATE USER needs WITH PASSWORD '...'".into()))?;
        return Ok(Some(Statement::CreateUser { username, password, role: role_given, email, if_not_exists }));
    }
    if c.peek_kw("ALTER") && c.peek_kw_at(1, "USER") {
        c.pos += 2;
        let username = username(c)?;
        if !c.eat_kw("SET") {
            return Err(c.unexpected("SET PASSWORD or SET ROLE"));
        }
        let change = if c.eat_kw("PASSWORD") {
            UserChange::Password(password(c)?)
        } else if c.eat_kw("ROLE") {
            UserChange::Role(role(c)?)
        } else {
            return Err(c.unexpected("PASSWORD or ROLE"));
        };
        c.expect_end()?;
        return Ok(Some(Statement::AlterUser { username, change }));
    }
    if c.peek_kw("DROP") && c.peek_kw_at(1, "USER") && !c.peek_kw_at(2, "TABLE") {
        c.pos += 2;
        let if_exists = c.eat_kws(&["IF", "EXISTS"]);
        let username = username(c)?;
        c.expect_end()?;
        return Ok(Some(Statement::DropUser { username, if_exists }));
    }
    Ok(None)
}

/// `EXECUTE AS USER 'name' (<statement>)`: the inner statement is the tokens between the first
/// '(' after the name and the statement's final ')', parsed here, once, like any other.
pub(super) fn parse_execute_as(c: &mut Cursor<'_, '_>) -> Result<Statement> {
    let shape = || Error::InvalidSql("expected EXECUTE AS USER 'name' (<statement>)".into());
    if !c.eat_kws(&["EXECUTE", "AS", "USER"]) {
        return Err(shape());
    }
    let username = username(c)?;
    let (open, close) = (c.pos, c.len().checked_sub(1).ok_or_else(shape)?);
    if c.token(open) != Some(&Token::LParen) || c.token(close) != Some(&Token::RParen) || close <= open + 1 {
        return Err(shape());
    }
    if c.token(open + 1).is_some_and(
        |t| matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("EXECUTE")),
    ) {
        return Err(Error::InvalidSql("EXECUTE AS USER cannot be nested".into()));
    }
    let inner = super::parse(c.sub_source(open + 1, close))?;
    if matches!(inner.statement, Statement::Begin | Statement::Commit | Statement::Rollback) {
        return Err(Error::InvalidSql("EXECUTE AS USER runs one statement, not transaction control".into()));
    }
    Ok(Statement::ExecuteAs { username, statement: Box::new(inner) })
}
