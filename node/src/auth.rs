//! Authentication of HTTP requests: password logins (argon2id), access tokens (PASETO
//! v4.local, keyed from the cluster secret so any node verifies a token issued by any other),
//! HTTP Basic credentials, the built-in `root` user, the opt-in anonymous identity, and a
//! rate limit on failed logins per user and per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use kalamdb_log::{GroupId, MetaGroup, Role, UserDef};
use kalamdb_projections::Catalog;
use kalamdb_query::ReadBarrier;
use pasetors::Local;
use pasetors::keys::{Generate, SymmetricKey};
use pasetors::token::UntrustedToken;
use pasetors::version4::{LocalToken, V4};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::groups::Groups;

/// The built-in administrator: not stored in the users group, always role `system`.
pub const ROOT_USER: &str = "root";
/// The identity of unauthenticated requests when `auth.allow_anonymous` is on.
pub const ANONYMOUS_USER: &str = "anonymous";
/// Failed logins (or Basic credentials) per user, and per client address, per window.
pub const LOGIN_FAILURES_MAX: u32 = 5;
/// The window over which failed logins are counted; a blocked key is free again after it.
pub const LOGIN_WINDOW_SECS: u64 = 60;
/// Users and addresses whose failures are tracked at once (bounds the limiter's memory).
pub const LOGIN_KEYS_TRACKED_MAX: usize = 16_384;
/// Verified Basic credentials remembered, so each request does not pay for argon2.
pub const BASIC_CACHE_ENTRIES_MAX: usize = 4096;
/// How long a verified Basic credential is remembered.
pub const BASIC_CACHE_SECS: u64 = 60;
/// Longest Authorization header accepted.
pub const AUTHORIZATION_BYTES_MAX: usize = 8192;

/// Who a request acts as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    #[serde(rename = "id")]
    pub user_id: String,
    pub username: String,
    #[serde(serialize_with = "role_name")]
    pub role: Role,
}

impl From<&UserDef> for Identity {
    fn from(u: &UserDef) -> Identity {
        Identity { user_id: u.user_id.clone(), username: u.username.clone(), role: u.role }
    }
}

fn role_name<S: serde::Serializer>(r: &Role, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(r.name())
}

/// How a request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Bearer,
    Basic,
    Anonymous,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Bearer => "bearer",
            Method::Basic => "basic",
            Method::Anonymous => "anonymous",
        }
    }
}

/// What an access token carries (encrypted: only nodes with the key can read it).
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    usr: String,
    role: String,
    iat: u64,
    exp: u64,
    /// `access` or `refresh`; tokens of earlier versions have none and are access tokens.
    #[serde(default)]
    typ: String,
    /// This token's id: a refresh token's is revoked when it is used (rotation).
    #[serde(default)]
    jti: String,
    /// The session (one login and its refreshes): logout revokes it, and with it every
    /// token it issued.
    #[serde(default)]
    sid: String,
}

const ACCESS: &str = "access";
const REFRESH: &str = "refresh";

/// A random token or session id: 128 bits from the OS generator, hex.
fn random_id() -> String {
    // pasetors' key generation is the OS generator the workspace already links.
    SymmetricKey::<V4>::generate().map_or_else(|_| String::new(), |k| hex::encode(&k.as_bytes()[..16]))
}

/// A refresh token that checked out: whose, and what rotating it revokes.
#[derive(Debug, Clone)]
pub struct RefreshGrant {
    pub identity: Identity,
    pub token_id: String,
    pub session_id: String,
    pub expires_at_secs: u64,
}

/// An access token and the refresh token that renews it.
#[derive(Debug, Clone)]
pub struct SessionTokens {
    pub access: Issued,
    pub refresh: Issued,
}

/// A freshly issued token.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub expires_at_secs: u64,
    pub identity: Identity,
}

pub(crate) fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn unauthorized(code: &'static str, message: impl Into<String>) -> Error {
    Error::Unauthorized { code, message: message.into() }
}

fn bad_credentials() -> Error {
    unauthorized("INVALID_CREDENTIALS", "invalid user name or password")
}

/// Counts failed logins per key ("u:name", "a:address") over a fixed window.
#[derive(Debug, Default)]
struct LoginLimiter {
    failures: HashMap<String, (Instant, u32)>,
}

impl LoginLimiter {
    fn window() -> Duration {
        Duration::from_secs(LOGIN_WINDOW_SECS)
    }

    /// Seconds until `key` may try again, if it is blocked now.
    fn blocked(&self, key: &str, now: Instant) -> Option<u64> {
        let (start, n) = self.failures.get(key)?;
        let elapsed = now.duration_since(*start);
        if *n >= LOGIN_FAILURES_MAX && elapsed < Self::window() {
            Some((Self::window() - elapsed).as_secs().max(1))
        } else {
            None
        }
    }

    fn fail(&mut self, key: String, now: Instant) {
        if self.failures.len() >= LOGIN_KEYS_TRACKED_MAX && !self.failures.contains_key(&key) {
            self.failures.retain(|_, (start, _)| now.duration_since(*start) < Self::window());
            if self.failures.len() >= LOGIN_KEYS_TRACKED_MAX {
                // Full of live entries: keep what is tracked rather than grow without bound.
                return;
            }
        }
        let entry = self.failures.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= Self::window() {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    /// Take back one counted attempt.
    fn undo(&mut self, key: &str) {
        if let Some(entry) = self.failures.get_mut(key) {
            entry.1 = entry.1.saturating_sub(1);
        }
    }

    fn clear(&mut self, key: &str) {
        self.failures.remove(key);
    }
}

/// The node's authenticator.
pub struct Auth {
    key: SymmetricKey<V4>,
    /// Bound into every token (PASETO implicit assertion): a token of another cluster that
    /// happens to share the secret is refused.
    implicit: Vec<u8>,
    ttl_secs: u64,
    refresh_ttl_secs: u64,
    /// argon2id hash of root's configured password; `None`: loopback-only, empty password.
    root_hash: Option<String>,
    anonymous: Option<Role>,
    /// A hash nobody's password matches, verified for unknown users so that a login takes
    /// the same time whether or not the user exists.
    decoy_hash: String,
    catalog: Arc<Catalog>,
    groups: Option<Arc<Groups>>,
    limiter: Mutex<LoginLimiter>,
    basic_cache: Mutex<HashMap<[u8; 32], Instant>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("ttl_secs", &self.ttl_secs).field("anonymous", &self.anonymous).finish()
    }
}

/// Token key material: the configured secret, the cluster's, or a random key kept with the
/// node's data.
fn key_material(cfg: &Config) -> Result<Vec<u8>> {
    if !cfg.auth.jwt_secret.is_empty() {
        return Ok(cfg.auth.jwt_secret.as_bytes().to_vec());
    }
    if let Some(c) = &cfg.cluster {
        return Ok(c.jwt_secret.as_bytes().to_vec());
    }
    local_key(&cfg.storage.data_path.join("auth").join("token.key"))
}

fn local_key(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            return hex::decode(text.trim()).map_err(|_| {
                Error::Config(format!("{} is not a hex key; delete it to make a new one", path.display()))
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let key = SymmetricKey::<V4>::generate().map_err(|e| Error::Config(format!("cannot generate a token key: {e}")))?;
    let text = hex::encode(key.as_bytes());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(key.as_bytes().to_vec())
}

impl Auth {
    pub fn new(cfg: &Config, catalog: Arc<Catalog>, groups: Option<Arc<Groups>>) -> Result<Auth> {
        let material = key_material(cfg)?;
        // Domain-separated, so the same secret keys the peer HMAC and tokens independently.
        let mut h = Sha256::new();
        h.update(b"kalamdb access token key v1\0");
        h.update(&material);
        let key = SymmetricKey::<V4>::from(&h.finalize()).map_err(|e| Error::Config(format!("token key: {e}")))?;
        let cluster_id = cfg.cluster.as_ref().map_or("single-node", |c| c.cluster_id.as_str());
        let hash = |p: &str| kalamdb_query::password::hash(p).map_err(|e| Error::Config(e.to_string()));
        let root_hash = if cfg.auth.root_password.is_empty() { None } else { Some(hash(&cfg.auth.root_password)?) };
        let anonymous = if cfg.auth.allow_anonymous { Role::parse(&cfg.auth.anonymous_role) } else { None };
        Ok(Auth {
            key,
            implicit: format!("kalamdb:{cluster_id}").into_bytes(),
            ttl_secs: cfg.auth.token_ttl_secs,
            refresh_ttl_secs: cfg.auth.refresh_token_ttl_secs,
            root_hash,
            anonymous,
            decoy_hash: hash("decoy password nobody has")?,
            catalog,
            groups,
            limiter: Mutex::new(LoginLimiter::default()),
            basic_cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn anonymous_role(&self) -> Option<Role> {
        self.anonymous
    }

    pub fn root_has_password(&self) -> bool {
        self.root_hash.is_some()
    }

    fn root_identity() -> Identity {
        Identity { user_id: ROOT_USER.into(), username: ROOT_USER.into(), role: Role::System }
    }

    /// Wait until this node has applied every users-group change committed before now (a
    /// user created through another node a moment ago is then known here).
    async fn sync_users(&self) -> Result<()> {
        let Some(g) = &self.groups else { return Ok(()) };
        if g.transport.is_none() {
            return Ok(());
        }
        crate::cluster::RequestBarrier::new(g.clone())
            .wait(GroupId::Meta(MetaGroup::Users))
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))
    }

    /// The limiter keys of a login: the user (failures from loopback counted apart, so remote
    /// guessing cannot lock an operator out of the local login) and the client address.
    fn limiter_keys(username: &str, client: IpAddr) -> [String; 2] {
        let user = if client.is_loopback() { format!("ul:{username}") } else { format!("u:{username}") };
        [user, format!("a:{client}")]
    }

    /// Consult the limiter and count the attempt as a failure *before* any hashing, so a
    /// burst of concurrent guesses is cut off at the limit, not after every guess was hashed.
    fn begin_attempt(&self, keys: &[String; 2]) -> Result<()> {
        let now = Instant::now();
        let mut lim = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(retry_after_secs) = lim.blocked(&keys[0], now).max(lim.blocked(&keys[1], now)) {
            return Err(Error::TooManyAttempts { retry_after_secs });
        }
        for k in keys {
            lim.fail(k.clone(), now);
        }
        Ok(())
    }

    /// Settle a counted attempt: a success clears the user's failures and takes the attempt
    /// back from the address; an attempt that never got an answer (busy, unavailable) is taken
    /// back from both.
    fn end_attempt(&self, keys: &[String; 2], result: &Result<Identity>) {
        let mut lim = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(_) => {
                lim.clear(&keys[0]);
                lim.undo(&keys[1]);
            }
            Err(Error::Unauthorized { .. }) => {
                metrics::counter!("kalamdb_auth_failures_total").increment(1);
            }
            Err(_) => {
                lim.undo(&keys[0]);
                lim.undo(&keys[1]);
            }
        }
    }

    /// Check a user name and password; rate-limited per user and per client address.
    pub async fn check_password(&self, username: &str, password: &str, client: IpAddr) -> Result<Identity> {
        let keys = Self::limiter_keys(username, client);
        self.begin_attempt(&keys)?;
        let result = self.verify_password(username, password, client).await;
        self.end_attempt(&keys, &result);
        result
    }

    async fn verify_password(&self, username: &str, password: &str, client: IpAddr) -> Result<Identity> {
        if username == ROOT_USER {
            return match &self.root_hash {
                Some(h) => {
                    if verify_blocking(password, h).await? {
                        Ok(Self::root_identity())
                    } else {
                        Err(bad_credentials())
                    }
                }
                None if client.is_loopback() && password.is_empty() => Ok(Self::root_identity()),
                None if client.is_loopback() => Err(bad_credentials()),
                None => Err(unauthorized(
                    "INVALID_CREDENTIALS",
                    "root has no password and may only log in from loopback; set auth.root_password (or KALAMDB_ROOT_PASSWORD)",
                )),
            };
        }
        if username == ANONYMOUS_USER {
            return Err(bad_credentials());
        }
        if self.catalog.users.get(username).is_none() {
            self.sync_users().await?;
        }
        match self.catalog.users.get(username) {
            Some(u) => {
                if verify_blocking(password, &u.password_hash).await? {
                    Ok(Identity::from(u.as_ref()))
                } else {
                    Err(bad_credentials())
                }
            }
            None => {
                // Same work as a wrong password, so timing does not tell which names exist.
                let _ = verify_blocking(password, &self.decoy_hash).await?;
                Err(bad_credentials())
            }
        }
    }

    /// Issue an access token for `who` (a session of its own).
    pub fn issue(&self, who: &Identity) -> Result<Issued> {
        self.issue_token(who, ACCESS, &random_id(), self.ttl_secs)
    }

    /// Issue an access token and a refresh token of session `sid` (a new one when `None`).
    pub fn issue_session(&self, who: &Identity, sid: Option<&str>) -> Result<SessionTokens> {
        let sid = sid.map_or_else(random_id, str::to_string);
        Ok(SessionTokens {
            access: self.issue_token(who, ACCESS, &sid, self.ttl_secs)?,
            refresh: self.issue_token(who, REFRESH, &sid, self.refresh_ttl_secs)?,
        })
    }

    fn issue_token(&self, who: &Identity, typ: &str, sid: &str, ttl_secs: u64) -> Result<Issued> {
        let iat = unix_secs();
        let claims = Claims {
            sub: who.user_id.clone(),
            usr: who.username.clone(),
            role: who.role.name().into(),
            iat,
            exp: iat + ttl_secs,
            typ: typ.into(),
            jti: random_id(),
            sid: sid.into(),
        };
        let payload = serde_json::to_vec(&claims).map_err(|e| Error::Internal(e.to_string()))?;
        let token = LocalToken::encrypt(&self.key, &payload, None, Some(&self.implicit))
            .map_err(|e| Error::Internal(format!("token encryption failed: {e}")))?;
        Ok(Issued { token, expires_at_secs: claims.exp, identity: who.clone() })
    }

    /// Lifetime of refresh tokens: how long a revoked session must be remembered.
    pub fn refresh_ttl_secs(&self) -> u64 {
        self.refresh_ttl_secs.max(self.ttl_secs)
    }

    /// Whether a token (or its session) was revoked.
    fn revoked(&self, c: &Claims) -> bool {
        (!c.jti.is_empty() && self.catalog.users.is_revoked(&c.jti))
            || (!c.sid.is_empty() && self.catalog.users.is_revoked(&c.sid))
    }

    /// The ids whose revocation ends what a token opened (its own and its session's).
    pub fn token_ids(&self, token: &str) -> Vec<String> {
        self.claims(token.trim())
            .map(|c| [c.jti, c.sid].into_iter().filter(|i| !i.is_empty()).collect())
            .unwrap_or_default()
    }

    /// Whether any of these token ids was revoked.
    pub fn any_revoked(&self, ids: &[String]) -> bool {
        ids.iter().any(|i| self.catalog.users.is_revoked(i))
    }

    /// Check a refresh token: ours, a refresh token, unexpired, not revoked, its user alive.
    pub async fn check_refresh(&self, token: &str) -> Result<RefreshGrant> {
        let c = self.claims(token.trim())?;
        if c.typ != REFRESH {
            return Err(unauthorized("INVALID_TOKEN", "the refresh endpoint needs a refresh token"));
        }
        if c.exp <= unix_secs() {
            return Err(unauthorized("TOKEN_EXPIRED", "the refresh token has expired; log in again"));
        }
        if self.revoked(&c) {
            return Err(unauthorized("TOKEN_REVOKED", "the refresh token was already used or revoked; log in again"));
        }
        let identity = self.identity_of(&c.sub).await?;
        Ok(RefreshGrant { identity, token_id: c.jti, session_id: c.sid, expires_at_secs: c.exp })
    }

    /// The session id and user of a token (any type, expired or not): what logout revokes.
    pub fn session_of(&self, token: &str) -> Option<(String, String)> {
        let c = self.claims(token.trim()).ok()?;
        (!c.sid.is_empty()).then_some((c.sid, c.sub))
    }

    /// The identity behind a token: it must decrypt with this cluster's key, be unexpired,
    /// and name a user that still exists (with the role that user has now).
    fn claims(&self, token: &str) -> Result<Claims> {
        let untrusted = UntrustedToken::<Local, V4>::try_from(token)
            .map_err(|_| unauthorized("INVALID_TOKEN", "the token is not a PASETO v4.local token"))?;
        let trusted = LocalToken::decrypt(&self.key, &untrusted, None, Some(&self.implicit))
            .map_err(|_| unauthorized("INVALID_TOKEN", "the token was not issued by this cluster or was altered"))?;
        serde_json::from_str(trusted.payload())
            .map_err(|_| unauthorized("INVALID_TOKEN", "the token's claims are not readable"))
    }

    /// When the bearer token of an `Authorization` header expires (Unix seconds); `None` for
    /// other credentials. Long-lived requests (tail subscriptions) end then.
    pub fn bearer_expiry(&self, authorization: Option<&[u8]>) -> Option<u64> {
        let text = std::str::from_utf8(authorization?).ok()?.trim();
        let (scheme, token) = text.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("Bearer") {
            return None;
        }
        self.claims(token.trim()).ok().map(|c| c.exp)
    }

    /// When a token expires (Unix seconds), if it is one of ours.
    pub fn token_expiry(&self, token: &str) -> Option<u64> {
        self.claims(token.trim()).ok().map(|c| c.exp)
    }

    pub async fn verify_token(&self, token: &str) -> Result<Identity> {
        let claims = self.claims(token)?;
        if claims.exp <= unix_secs() {
            return Err(unauthorized("TOKEN_EXPIRED", "the token has expired; log in again"));
        }
        if claims.typ == REFRESH {
            return Err(unauthorized(
                "INVALID_TOKEN",
                "a refresh token is not an access token: trade it at /v1/api/auth/refresh",
            ));
        }
        if self.revoked(&claims) {
            return Err(unauthorized("TOKEN_REVOKED", "the token was revoked (logged out); log in again"));
        }
        self.identity_of(&claims.sub).await
    }

    /// The user a token names, as the users group says now.
    async fn identity_of(&self, user_id: &str) -> Result<Identity> {
        if user_id == ROOT_USER {
            return Ok(Self::root_identity());
        }
        if self.catalog.users.by_id(user_id).is_none() {
            self.sync_users().await?;
        }
        match self.catalog.users.by_id(user_id) {
            Some(u) => Ok(Identity::from(u.as_ref())),
            None => Err(unauthorized("INVALID_TOKEN", "the token's user no longer exists")),
        }
    }

    /// `who` as the users group now says (after a read barrier on it): a user dropped since
    /// the credentials were checked is refused, a changed role takes effect.
    pub fn confirm(&self, who: Identity) -> Result<Identity> {
        if who.user_id == ROOT_USER || who.user_id == ANONYMOUS_USER {
            return Ok(who);
        }
        match self.catalog.users.by_id(&who.user_id) {
            Some(u) => Ok(Identity::from(u.as_ref())),
            None => Err(unauthorized("INVALID_TOKEN", "the credentials' user no longer exists")),
        }
    }

    /// A catalog user's email and creation and last-change times (microseconds); `None` for
    /// root and anonymous, which have no catalog record.
    pub fn profile_of(&self, user_id: &str) -> Option<(Option<String>, i64, i64)> {
        self.catalog.users.by_id(user_id).map(|u| (u.email.clone(), u.created_at_micros, u.updated_at_micros))
    }

    /// The stored password hash of a catalog user (not root, whose hash comes from config and
    /// cannot change while the node runs).
    pub fn password_hash_of(&self, user_id: &str) -> Option<String> {
        self.catalog.users.by_id(user_id).map(|u| u.password_hash.clone())
    }

    /// Basic credentials, remembered for a short while once verified (argon2 is slow on
    /// purpose; a client sending Basic on every request should not pay for it every time).
    async fn basic(&self, username: &str, password: &str, client: IpAddr) -> Result<Identity> {
        let stored = match username {
            ROOT_USER => self.root_hash.clone().unwrap_or_default(),
            _ => self.catalog.users.get(username).map(|u| u.password_hash.clone()).unwrap_or_default(),
        };
        let mut h = Sha256::new();
        for part in [username.as_bytes(), password.as_bytes(), stored.as_bytes(), client.to_string().as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        let cache_key: [u8; 32] = h.finalize().into();
        let now = Instant::now();
        let cached = {
            let cache = self.basic_cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.get(&cache_key).is_some_and(|until| *until > now)
        };
        if cached && !stored.is_empty() {
            // The stored hash is part of the key: a changed password or a dropped user misses.
            if username == ROOT_USER {
                return Ok(Self::root_identity());
            }
            if let Some(u) = self.catalog.users.get(username) {
                return Ok(Identity::from(u.as_ref()));
            }
        }
        let who = self.check_password(username, password, client).await?;
        let mut cache = self.basic_cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= BASIC_CACHE_ENTRIES_MAX {
            cache.retain(|_, until| *until > now);
            if cache.len() >= BASIC_CACHE_ENTRIES_MAX {
                cache.clear();
            }
        }
        cache.insert(cache_key, now + Duration::from_secs(BASIC_CACHE_SECS));
        Ok(who)
    }

    /// Who sends a request with this `Authorization` header (or none) from `client`.
    pub async fn authenticate(&self, authorization: Option<&[u8]>, client: IpAddr) -> Result<(Identity, Method)> {
        let Some(raw) = authorization else {
            return match self.anonymous {
                Some(role) => Ok((
                    Identity { user_id: ANONYMOUS_USER.into(), username: ANONYMOUS_USER.into(), role },
                    Method::Anonymous,
                )),
                None => Err(unauthorized(
                    "AUTH_REQUIRED",
                    "authentication required: send 'Authorization: Bearer <token>' (POST /v1/api/auth/login) or Basic credentials",
                )),
            };
        };
        if raw.len() > AUTHORIZATION_BYTES_MAX {
            return Err(unauthorized("INVALID_AUTHORIZATION", "the Authorization header is too long"));
        }
        let text = std::str::from_utf8(raw)
            .map_err(|_| unauthorized("INVALID_AUTHORIZATION", "the Authorization header is not text"))?
            .trim();
        let (scheme, value) = text.split_once(' ').unwrap_or((text, ""));
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("Bearer") {
            return Ok((self.verify_token(value).await?, Method::Bearer));
        }
        if scheme.eq_ignore_ascii_case("Basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    unauthorized("INVALID_AUTHORIZATION", "Basic credentials are not base64 of 'user:password'")
                })?;
            let (user, password) = decoded
                .split_once(':')
                .ok_or_else(|| unauthorized("INVALID_AUTHORIZATION", "Basic credentials must be 'user:password'"))?;
            return Ok((self.basic(user, password, client).await?, Method::Basic));
        }
        Err(unauthorized("INVALID_AUTHORIZATION", "the Authorization scheme must be Bearer or Basic"))
    }
}

/// A bounded argon2 check (see `kalamdb_query::password`): a flood waits briefly, then is
/// refused as busy.
async fn verify_blocking(password: &str, phc: &str) -> Result<bool> {
    kalamdb_query::password::verify_blocking(password, phc).await.map_err(|e| match e {
        kalamdb_query::Error::Busy(m) => Error::Busy(m),
        other => Error::Internal(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(cfg: &Config) -> Auth {
        Auth::new(cfg, Catalog::new(), None).unwrap()
    }

    fn loopback() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    fn remote() -> IpAddr {
        IpAddr::from([192, 0, 2, 7])
    }

    fn config(dir: &Path) -> Config {
        let mut cfg = Config::default();
        cfg.storage.data_path = dir.to_path_buf();
        cfg
    }

    #[tokio::test]
    async fn tokens_round_trip_and_bind_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.auth.jwt_secret = "a-token-secret-of-some-length".into();
        let a = auth(&cfg);
        let issued = a.issue(&Auth::root_identity()).unwrap();
        assert!(issued.token.starts_with("v4.local."), "{}", issued.token);
        assert_eq!(a.verify_token(&issued.token).await.unwrap(), Auth::root_identity());
        // Another node with the same secret verifies it; a different secret does not.
        assert!(auth(&cfg).verify_token(&issued.token).await.is_ok());
        cfg.auth.jwt_secret = "a-different-secret-entirely".into();
        let e = auth(&cfg).verify_token(&issued.token).await.unwrap_err();
        assert!(matches!(e, Error::Unauthorized { code: "INVALID_TOKEN", .. }), "{e}");
        // Tampering is detected.
        let mut t = issued.token.clone().into_bytes();
        let last = t.len() - 3;
        t[last] = if t[last] == b'A' { b'B' } else { b'A' };
        assert!(a.verify_token(std::str::from_utf8(&t).unwrap()).await.is_err());
    }

    #[tokio::test]
    async fn expired_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let mut a = auth(&cfg);
        a.ttl_secs = 0;
        let issued = a.issue(&Auth::root_identity()).unwrap();
        let e = a.verify_token(&issued.token).await.unwrap_err();
        assert!(matches!(e, Error::Unauthorized { code: "TOKEN_EXPIRED", .. }), "{e}");
    }

    #[tokio::test]
    async fn root_without_password_is_loopback_only() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth(&config(dir.path()));
        assert!(a.check_password("root", "", loopback()).await.is_ok());
        assert!(a.check_password("root", "", remote()).await.is_err());
        assert!(a.check_password("root", "guess", loopback()).await.is_err());
        // The single-node key was created once and is reused.
        let key1 = std::fs::read_to_string(dir.path().join("auth/token.key")).unwrap();
        let _ = auth(&config(dir.path()));
        assert_eq!(std::fs::read_to_string(dir.path().join("auth/token.key")).unwrap(), key1);
    }

    #[tokio::test]
    async fn failed_logins_are_rate_limited_per_user_and_address() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.auth.root_password = "the-right-password".into();
        let a = auth(&cfg);
        for _ in 0..LOGIN_FAILURES_MAX {
            let e = a.check_password("root", "wrong", remote()).await.unwrap_err();
            assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
        }
        // Blocked now, even with the right password, from any remote address (per user) ...
        let other_remote: IpAddr = "203.0.113.9".parse().unwrap();
        let e = a.check_password("root", "the-right-password", other_remote).await.unwrap_err();
        assert!(matches!(e, Error::TooManyAttempts { retry_after_secs } if retry_after_secs <= LOGIN_WINDOW_SECS));
        // ... but remote guessing does not lock the operator out of the loopback login ...
        assert!(a.check_password("root", "the-right-password", loopback()).await.is_ok());
        // ... and that address is blocked for other users too (per address).
        let e = a.check_password("nobody", "x", remote()).await.unwrap_err();
        assert!(matches!(e, Error::TooManyAttempts { .. }), "{e}");
        let e = a.check_password("nobody", "x", loopback()).await.unwrap_err();
        assert!(matches!(e, Error::Unauthorized { .. }), "another address is not blocked: {e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_guesses_is_cut_off_before_hashing() {
        let dir = tempfile::tempdir().unwrap();
        let a = Arc::new(auth(&config(dir.path())));
        let tries: Vec<_> = (0..40)
            .map(|i| {
                let a = a.clone();
                tokio::spawn(async move { a.check_password("victim", &format!("guess-{i}"), remote()).await })
            })
            .collect();
        let (mut refused, mut limited, mut busy) = (0, 0, 0);
        for t in tries {
            match t.await.unwrap().unwrap_err() {
                Error::Unauthorized { .. } => refused += 1,
                Error::TooManyAttempts { .. } => limited += 1,
                Error::Busy(_) => busy += 1,
                other => panic!("unexpected {other}"),
            }
        }
        // Attempts are counted when they start: only the first few reach argon2 at all.
        assert!(refused <= LOGIN_FAILURES_MAX, "{refused} guesses were hashed");
        assert_eq!(refused + limited + busy, 40);
    }

    #[tokio::test]
    async fn authorization_header_forms() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        let a = auth(&cfg);
        let e = a.authenticate(None, loopback()).await.unwrap_err();
        assert!(matches!(e, Error::Unauthorized { code: "AUTH_REQUIRED", .. }), "{e}");
        let (who, m) = a.authenticate(Some(b"Basic cm9vdDo="), loopback()).await.unwrap();
        assert_eq!((who.username.as_str(), m), ("root", Method::Basic));
        let e = a.authenticate(Some(b"Digest abc"), loopback()).await.unwrap_err();
        assert!(matches!(e, Error::Unauthorized { code: "INVALID_AUTHORIZATION", .. }), "{e}");
        let e = a.authenticate(Some(b"Basic !!!"), loopback()).await.unwrap_err();
        assert!(matches!(e, Error::Unauthorized { code: "INVALID_AUTHORIZATION", .. }), "{e}");
        let tok = a.issue(&Auth::root_identity()).unwrap().token;
        let header = format!("Bearer {tok}");
        assert_eq!(a.authenticate(Some(header.as_bytes()), remote()).await.unwrap().1, Method::Bearer);
        cfg.auth.allow_anonymous = true;
        cfg.auth.anonymous_role = "service".into();
        let (who, m) = auth(&cfg).authenticate(None, remote()).await.unwrap();
        assert_eq!((who.role, m), (Role::Service, Method::Anonymous));
    }
}
