//! Rate limits (tower_governor): per user on authenticated routes, per client address on the
//! others. Over the limit: 429 `rate_limited` in the contract's envelope, with `Retry-After` and
//! `x-ratelimit-*` headers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::response::IntoResponse;
use governor::middleware::StateInformationMiddleware;
use tower_governor::GovernorError;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;

use crate::auth::extractor::{bearer_in, client_ip_from};
use crate::auth::jwt::JwtKeys;
use crate::config::{RateQuota, TrustProxy};
use crate::error::ApiError;

/// Keys a request by its user (a valid bearer token) or else by its client address.
#[derive(Clone)]
pub struct ClientKey {
    jwt: Arc<JwtKeys>,
    trust_proxy: TrustProxy,
    per_user: bool,
}

impl KeyExtractor for ClientKey {
    type Key = String;

    fn extract<T>(&self, req: &Request<T>) -> Result<Self::Key, GovernorError> {
        // The token as the authentication reads it, whatever the scheme's case: a request the
        // service serves as a user is counted against that user. The token's version is part of
        // the key, so that a token ended by a password or role change (one a thief kept, or an
        // app still retrying) spends its own budget, not that of the user's new sessions.
        if self.per_user
            && let Some(token) = bearer_in(req.headers())
            && let Ok(claims) = self.jwt.verify(token)
        {
            return Ok(format!("user:{}:{}", claims.sub, claims.ver));
        }
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>();
        client_ip_from(req.headers(), peer, &self.trust_proxy)
            .map(address_key)
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

/// An IPv4 address, or the /64 network of an IPv6 one: an IPv6 subscriber is given a whole /64
/// and can send from any address in it.
fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("ip:{v4}"),
            None => {
                let s = v6.segments();
                format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

pub type Limiter = Arc<GovernorConfig<ClientKey, StateInformationMiddleware>>;

/// A limiter of `quota`, keyed per user when `per_user`, else per client address.
pub fn limiter(
    quota: RateQuota,
    jwt: Arc<JwtKeys>,
    trust_proxy: TrustProxy,
    per_user: bool,
) -> Limiter {
    let replenish = quota.period / quota.burst;
    let config = GovernorConfigBuilder::default()
        // Not zero, which the limiter refuses (more than a billion requests a second).
        .period(replenish.max(Duration::from_nanos(1)))
        .burst_size(quota.burst)
        .key_extractor(ClientKey {
            jwt,
            trust_proxy,
            per_user,
        })
        .use_headers()
        .error_handler(|error| match error {
            GovernorError::TooManyRequests { wait_time, headers } => {
                // The limiter's wait is in whole seconds, rounded down: one more, so that a
                // client waiting as told is let through. Both headers that tell it say so.
                let retry_after_s = wait_time + 1;
                let mut response = ApiError::RateLimited { retry_after_s }.into_response();
                if let Some(headers) = headers {
                    for (name, value) in &headers {
                        if name != axum::http::header::RETRY_AFTER {
                            response.headers_mut().insert(name, value.clone());
                        }
                    }
                }
                response.headers_mut().insert(
                    "x-ratelimit-after",
                    axum::http::HeaderValue::from(retry_after_s),
                );
                response
            }
            GovernorError::UnableToExtractKey => {
                ApiError::BadRequest("cannot determine the client address".into()).into_response()
            }
            GovernorError::Other { .. } => {
                ApiError::Internal(anyhow::anyhow!("rate limiter failed")).into_response()
            }
        })
        .finish()
        .expect("quota has a non-zero burst and period");
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_network() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), "ip:192.0.2.7");
        assert_eq!(address_key("192.0.2.7".parse().unwrap()), "ip:192.0.2.7");
    }
}
