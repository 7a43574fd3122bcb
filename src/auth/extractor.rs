//! The current user, as an extractor, and the role guards: a route for admins (or supervisors
//! and above) takes an [`AdminUser`] (a [`SupervisingUser`]), refused before anything else of
//! the request is read; one that decides by role as it goes reads as one line:
//! `user.require(Role::Supervisor)?`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use sqlx::PgPool;
use uuid::Uuid;

use crate::cache::TtlMap;
use crate::config::TrustProxy;
use crate::domain::{Role, UserStatus};
use crate::error::ApiError;
use crate::state::AppState;

/// An authenticated, active user. Role and status come from the database (through a short
/// cache), not from the token, so a role change or deactivation takes effect promptly.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub role: Role,
    pub email: String,
    /// The user's own facility, where a clock-in without one happens.
    pub facility_id: Option<Uuid>,
    /// The token version the request's token carries (the account's when it was checked).
    pub token_version: i32,
}

impl AuthUser {
    /// At least this role, or 403.
    pub fn require(&self, minimum: Role) -> Result<(), ApiError> {
        if self.role >= minimum {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(user) = parts.extensions.get::<AuthUser>() {
            return Ok(user.clone());
        }
        let token = bearer_in(&parts.headers).ok_or(ApiError::Unauthenticated)?;
        let claims = state.jwt.verify(token)?;
        // Token versions only grow, so a token older than the cached state is refused without
        // a read. One that matches an active account is served from the cache. Anything else
        // (nothing cached, a newer token, an account cached as inactive) may come from a change
        // another process made (another instance, the command line): the row decides.
        let record = match state.auth_cache.cached(claims.sub) {
            Some(cached) if claims.ver < cached.token_version => {
                return Err(ApiError::InvalidToken);
            }
            Some(cached)
                if claims.ver == cached.token_version && cached.status == UserStatus::Active =>
            {
                cached
            }
            _ => state
                .auth_cache
                .reload(&state.db, claims.sub)
                .await?
                .ok_or(ApiError::InvalidToken)?,
        };
        if record.status != UserStatus::Active || record.token_version != claims.ver {
            return Err(ApiError::InvalidToken);
        }
        tracing::Span::current().record("user.id", tracing::field::display(claims.sub));
        let user = AuthUser {
            id: claims.sub,
            role: record.role,
            email: record.email,
            facility_id: record.facility_id,
            token_version: claims.ver,
        };
        parts.extensions.insert(user.clone());
        Ok(user)
    }
}

/// The least role a route takes, as a type (see [`Requires`]).
pub trait Minimum {
    const ROLE: Role;
}

pub struct AdminRole;

impl Minimum for AdminRole {
    const ROLE: Role = Role::Admin;
}

pub struct SupervisorRole;

impl Minimum for SupervisorRole {
    const ROLE: Role = Role::Supervisor;
}

/// A user of at least `M::ROLE`, else 403, found before anything else of the request is read:
/// a caller the route is not for learns nothing from the errors of its path, query string or
/// body.
pub struct Requires<M>(AuthUser, std::marker::PhantomData<M>);

/// Admins only.
pub type AdminUser = Requires<AdminRole>;
/// Supervisors and above.
pub type SupervisingUser = Requires<SupervisorRole>;

impl<M> std::ops::Deref for Requires<M> {
    type Target = AuthUser;

    fn deref(&self) -> &AuthUser {
        &self.0
    }
}

impl<M> Requires<M> {
    pub fn into_inner(self) -> AuthUser {
        self.0
    }
}

impl<M: Minimum + Send + Sync> FromRequestParts<AppState> for Requires<M> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        user.require(M::ROLE)?;
        Ok(Self(user, std::marker::PhantomData))
    }
}

/// The token of an `Authorization: Bearer …` header, the scheme in any case.
pub fn bearer_in(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// What the token check needs to know about a user.
#[derive(Debug, Clone)]
pub struct AuthRecord {
    pub role: Role,
    pub status: UserStatus,
    pub token_version: i32,
    pub email: String,
    pub facility_id: Option<Uuid>,
}

/// A small per-process cache of [`AuthRecord`]s. Writes in this process invalidate their entry
/// at once; other instances see a change within the TTL (30 s, inside the contract's 60 s).
pub struct AuthCache {
    entries: TtlMap<Uuid, AuthRecord>,
}

impl AuthCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            entries: TtlMap::new(ttl, 100_000),
        }
    }

    /// What this instance holds for the account, if it was read within the time to live.
    pub fn cached(&self, id: Uuid) -> Option<AuthRecord> {
        self.entries.get(&id)
    }

    /// The account's state read from the database, replacing what is cached.
    pub async fn reload(&self, db: &PgPool, id: Uuid) -> Result<Option<AuthRecord>, ApiError> {
        let generation = self.entries.generation();
        let row: Option<(String, String, i32, String, Option<Uuid>)> = sqlx::query_as(
            "SELECT role, status, token_version, email, facility_id FROM users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(db)
        .await?;
        let Some((role, status, token_version, email, facility_id)) = row else {
            return Ok(None);
        };
        let record = AuthRecord {
            role: role.parse().map_err(anyhow::Error::msg)?,
            status: status.parse().map_err(anyhow::Error::msg)?,
            token_version,
            email,
            facility_id,
        };
        self.entries.insert_since(id, record.clone(), generation);
        Ok(Some(record))
    }

    pub fn invalidate(&self, id: Uuid) {
        self.entries.remove(&id);
    }
}

/// Where a request came from, for the audit trail and per-address rate limits.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl FromRequestParts<AppState> for ClientInfo {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(ClientInfo {
            ip: client_ip(parts, &state.config.rate_limits.trust_proxy).map(|ip| ip.to_string()),
            user_agent: parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(512).collect()),
        })
    }
}

/// The client address: when the peer is a trusted proxy, the last `X-Forwarded-For` entry,
/// the address that proxy saw and appended (entries left of it are whatever the client sent);
/// else the peer address. Never the header otherwise, or anyone could pick their own
/// rate-limit key. With the proxies named (`TRUST_PROXY` networks), an entry that is itself one
/// of them (a load balancer behind a CDN, both named) is passed over for the one left of it.
pub fn client_ip(parts: &Parts, trust: &TrustProxy) -> Option<IpAddr> {
    client_ip_from(&parts.headers, parts.extensions.get(), trust)
}

pub fn client_ip_from(
    headers: &axum::http::HeaderMap,
    peer: Option<&ConnectInfo<SocketAddr>>,
    trust: &TrustProxy,
) -> Option<IpAddr> {
    let peer = peer.map(|ConnectInfo(addr)| addr.ip());
    if !trust.trusts(peer) {
        return peer;
    }
    // From the right. A proxy may add its own header line rather than extend the client's: the
    // last entry of the last line is the one it wrote. Split as bytes: what a client wrote on
    // the left may be anything, and must not hide the entries the proxies wrote after it.
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|line| line.as_bytes().rsplit(|&b| b == b','));
    let mut client = peer;
    for entry in entries {
        // An entry no proxy would write ends the walk at the hop right of it.
        let Some(ip) = std::str::from_utf8(entry)
            .ok()
            .and_then(|entry| forwarded_address(entry.trim()))
        else {
            break;
        };
        client = Some(ip);
        // Only named proxies can be told apart from clients; `true` believes one hop.
        if !matches!(trust, TrustProxy::Peers(_)) || !trust.trusts(client) {
            break;
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, or an address with the client's port
/// (`203.0.113.5:41234`, `[2001:db8::1]:443`) or an IPv6 address in brackets (`[2001:db8::1]`)
/// as some gateways write it.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    entry
        .parse()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
            inner.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
        })
}
