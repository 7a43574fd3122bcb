//! Authentication: password hashing, tokens, the current-user extractor, role guards and rate
//! limits.

pub mod extractor;
pub mod jwt;
pub mod lockout;
pub mod password;
pub mod rate_limit;
pub mod refresh;

pub use extractor::{AdminUser, AuthUser, ClientInfo, SupervisingUser};
