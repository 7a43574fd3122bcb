//! Authentication: password hashing, tokens, the current-user extractor and role guards.

pub mod password;
