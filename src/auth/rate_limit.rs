//! Rate limits (tower_governor): per user on authenticated routes, per client address on the
//! others. Over the limit: 429 `rate_limited` in the contract's envelope, with `Retry-After` and
//! `x-ratelimit-*` headers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::response::IntoResponse;
use governor::middleware::StateInformationMiddleware;
use tower_governor::GovernorError;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;

use crate::auth::extractor::client_ip_from;
use crate::auth::jwt::JwtKeys;
use crate::config::RateQuota;
use crate::error::ApiError;

/// Keys a request by its user (a valid bearer token) or else by its client address.
#[derive(Clone)]
pub struct ClientKey {
    jwt: Arc<JwtKeys>,
    trust_proxy: bool,
    per_user: bool,
}

impl KeyExtractor for ClientKey {
    type Key = String;

    fn extract<T>(&self, req: &Request<T>) -> Result<Self::Key, GovernorError> {
        if self.per_user
            && let Some(token) = req
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
            && let Ok(claims) = self.jwt.verify(token.trim())
        {
            return Ok(format!("user:{}", claims.sub));
        }
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>();
        client_ip_from(req.headers(), peer, self.trust_proxy)
            .map(|ip| format!("ip:{ip}"))
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

pub type Limiter = Arc<GovernorConfig<ClientKey, StateInformationMiddleware>>;

/// A limiter of `quota`, keyed per user when `per_user`, else per client address.
pub fn limiter(quota: RateQuota, jwt: Arc<JwtKeys>, trust_proxy: bool, per_user: bool) -> Limiter {
    let replenish = quota.period / quota.burst;
    let config = GovernorConfigBuilder::default()
        .period(replenish.max(Duration::from_millis(1)))
        .burst_size(quota.burst)
        .key_extractor(ClientKey {
            jwt,
            trust_proxy,
            per_user,
        })
        .use_headers()
        .error_handler(|error| match error {
            GovernorError::TooManyRequests { wait_time, headers } => {
                let mut response = ApiError::RateLimited {
                    retry_after_s: wait_time.max(1),
                }
                .into_response();
                if let Some(headers) = headers {
                    for (name, value) in &headers {
                        if name != axum::http::header::RETRY_AFTER {
                            response.headers_mut().insert(name, value.clone());
                        }
                    }
                }
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
