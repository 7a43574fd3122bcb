//! Access tokens: JWT HS256 with `sub, role, iat, exp, iss, aud, jti` (and `ver`, the user's
//! token version), algorithm pinned so `alg: none` or an asymmetric downgrade is refused.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use crate::config::AuthSettings;
use crate::domain::Role;
use crate::error::ApiError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub role: Role,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    pub jti: Uuid,
    /// The user's token version when issued; a later version makes the token void.
    pub ver: i32,
}

pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    pub ttl: Duration,
    /// Signs what the service hands clients to give back unchanged (pull cursors).
    seal: Hmac<Sha256>,
}

/// Put before what [`JwtKeys::seal`] signs, so that no signature it makes is one over a token.
const SEALED: &[u8] = b"field-attendance sealed\0";

impl JwtKeys {
    pub fn new(settings: &AuthSettings) -> Self {
        let secret = settings.jwt_secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["sub", "exp", "iat", "iss", "aud"]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            ttl: settings.access_ttl,
            seal: Hmac::new_from_slice(secret).expect("HMAC takes a key of any length"),
        }
    }

    /// `text` as `<text>.<signature>`: a client can hand it back, and cannot change it.
    pub fn seal(&self, text: &str) -> String {
        let tag = URL_SAFE_NO_PAD.encode(self.mac_of(text).finalize().into_bytes());
        format!("{text}.{tag}")
    }

    /// The text that [`Self::seal`] signed, if `sealed` is one it made with this secret.
    pub fn open<'a>(&self, sealed: &'a str) -> Option<&'a str> {
        let (text, tag) = sealed.rsplit_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac_of(text).verify_slice(&tag).ok().map(|()| text)
    }

    /// The signature of `text`, ready to finish or check (see [`SEALED`]).
    fn mac_of(&self, text: &str) -> Hmac<Sha256> {
        let mut mac = self.seal.clone();
        mac.update(SEALED);
        mac.update(text.as_bytes());
        mac
    }

    pub fn issue(&self, user_id: Uuid, role: Role, version: i32) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id,
            role,
            iat: now,
            exp: now + self.ttl.as_secs() as i64,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti: Uuid::new_v4(),
            ver: version,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// 401 `token_expired` for an expired token, 401 `invalid_token` for anything else wrong.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::TokenExpired,
                _ => ApiError::InvalidToken,
            })
    }
}
