//! Roles, account statuses, and the email and password newtypes.

use std::fmt;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The organisation's roles, lowest to highest. The derived order is the hierarchy.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Tester,
    DataClerk,
    Focal,
    Ddo,
    Supervisor,
    Backstopper,
    Admin,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Tester,
        Role::DataClerk,
        Role::Focal,
        Role::Ddo,
        Role::Supervisor,
        Role::Backstopper,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Tester => "tester",
            Role::DataClerk => "data_clerk",
            Role::Focal => "focal",
            Role::Ddo => "ddo",
            Role::Supervisor => "supervisor",
            Role::Backstopper => "backstopper",
            Role::Admin => "admin",
        }
    }

    /// Field roles see only their own records.
    pub fn is_field(self) -> bool {
        self < Role::Supervisor
    }

    /// Roles that may be named as someone's supervisor.
    pub fn can_supervise(self) -> bool {
        self >= Role::Supervisor
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role `{s}`"))
    }
}

impl TryFrom<String> for Role {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Pending,
    Active,
    Inactive,
    Suspended,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Pending => "pending",
            UserStatus::Active => "active",
            UserStatus::Inactive => "inactive",
            UserStatus::Suspended => "suspended",
        }
    }
}

impl FromStr for UserStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(UserStatus::Pending),
            "active" => Ok(UserStatus::Active),
            "inactive" => Ok(UserStatus::Inactive),
            "suspended" => Ok(UserStatus::Suspended),
            _ => Err(format!("unknown status `{s}`")),
        }
    }
}

impl TryFrom<String> for UserStatus {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A syntactically valid email address, trimmed and lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// The longest address that can be delivered to (RFC 5321's path limit, less its brackets).
    pub const MAX_BYTES: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, String> {
        let email = raw.trim().to_lowercase();
        if email.len() > Self::MAX_BYTES || !validator::ValidateEmail::validate_email(&email) {
            return Err("must be a valid email address".into());
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password that meets the policy: 10 to 128 characters, not only spaces, and not the
/// account's email.
pub struct Password(SecretString);

impl Password {
    pub fn parse(raw: &str, email: &str) -> Result<Self, String> {
        let chars = raw.chars().count();
        if chars < 10 {
            return Err("must be at least 10 characters".into());
        }
        if chars > 128 {
            return Err("must be at most 128 characters".into());
        }
        if raw.trim().is_empty() {
            return Err("must not be only spaces".into());
        }
        if raw.trim().eq_ignore_ascii_case(email.trim()) {
            return Err("must not be the email address".into());
        }
        Ok(Self(SecretString::from(raw.to_string())))
    }

    pub fn into_secret(self) -> SecretString {
        self.0
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_lowest_to_highest() {
        assert!(Role::Tester < Role::DataClerk);
        assert!(Role::Ddo < Role::Supervisor);
        assert!(Role::Backstopper < Role::Admin);
        assert!(Role::Ddo.is_field() && !Role::Supervisor.is_field());
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            Email::parse("  Ada@Example.ORG ").unwrap().as_str(),
            "ada@example.org"
        );
        for bad in ["", "no-at-sign", "@example.org", "a@", "a b@example.org"] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_password_policy_holds() {
        assert!(Password::parse("short", "a@b.org").is_err());
        assert!(Password::parse(&"x".repeat(129), "a@b.org").is_err());
        assert!(Password::parse("ada@example.org", "ada@example.org").is_err());
        assert!(Password::parse("ADA@example.org", "ada@example.org").is_err());
        assert!(Password::parse("a long enough passphrase", "ada@example.org").is_ok());
        assert!(Password::parse(&" ".repeat(12), "a@b.org").is_err());
        assert!(Password::parse(" \u{A0}\t          ", "a@b.org").is_err());
        // Length is counted in characters, not bytes.
        assert!(Password::parse("ééééééééé", "a@b.org").is_err());
    }
}
