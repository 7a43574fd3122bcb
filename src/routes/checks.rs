//! Checks of fields that several routes take: trimmed text, a new account's identity, the
//! supervisor and the facility a user is given.

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::domain::{Email, Password, Role, UserStatus};
use crate::error::{ApiError, Invalid};

/// Trims optional text; blank means absent.
pub fn optional_text(
    value: Option<String>,
    field: &str,
    max: usize,
    invalid: &mut Invalid,
) -> Option<String> {
    let value = value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())?;
    // Free text may span lines; identifiers and names may not carry control characters.
    let multi_line = matches!(field, "notes" | "address");
    if value.contains('\0') || (!multi_line && value.chars().any(char::is_control)) {
        invalid.add(field, "must not contain control characters");
    }
    if value.chars().count() > max {
        invalid.add(field, format!("must be at most {max} characters"));
    }
    Some(value)
}

pub fn required_text(value: &str, field: &str, max: usize, invalid: &mut Invalid) -> String {
    let value = value.trim().to_string();
    if value.chars().any(char::is_control) {
        invalid.add(field, "must not contain control characters");
    } else if value.chars().all(crate::domain::shows_nothing) {
        // Empty, or nothing a list could show or a search find (a zero-width space pasted).
        invalid.add(field, "must not be blank");
    } else if value.chars().count() > max {
        invalid.add(field, format!("must be at most {max} characters"));
    }
    value
}

/// The checked identity fields of a new account (registration or admin creation); `None` where
/// the field failed, with the reason recorded in `invalid`.
pub struct NewIdentity {
    pub email: Option<Email>,
    pub password: Option<Password>,
    pub first_name: String,
    pub last_name: String,
    pub phone: Option<String>,
    pub employee_id: Option<String>,
}

impl NewIdentity {
    pub fn check(
        email: &str,
        password: &str,
        first_name: &str,
        last_name: &str,
        phone: Option<String>,
        employee_id: Option<String>,
        invalid: &mut Invalid,
    ) -> Self {
        let parsed_email = invalid.check("email", Email::parse(email));
        let password = invalid.check(
            "password",
            Password::parse(
                password,
                parsed_email.as_ref().map_or(email, |e| e.as_str()),
            ),
        );
        NewIdentity {
            email: parsed_email,
            password,
            first_name: required_text(first_name, "first_name", 100, invalid),
            last_name: required_text(last_name, "last_name", 100, invalid),
            phone: optional_text(phone, "phone", 32, invalid),
            employee_id: optional_text(employee_id, "employee_id", 64, invalid),
        }
    }
}

/// Checks that `supervisor_id` names someone who may supervise: a role that supervises, no
/// lower than the user's `role` when given (a supervisor could otherwise approve, move or read
/// an admin; `None`: the user keeps this supervisor and their role), with an active account,
/// unless the user already has them (`kept`: an edit that sends the account's other fields back
/// unchanged). Inside a transaction the row stays share-locked, so the role cannot change, nor
/// the account be deactivated, before the transaction ends.
pub async fn check_supervisor(
    db: impl sqlx::PgExecutor<'_>,
    supervisor_id: Option<Uuid>,
    role: Option<Role>,
    kept: Option<Uuid>,
    invalid: &mut Invalid,
) -> Result<(), ApiError> {
    if let Some(id) = supervisor_id {
        let found: Option<(String, String)> =
            sqlx::query_as("SELECT role, status FROM users WHERE id = $1 FOR SHARE")
                .bind(id)
                .fetch_optional(db)
                .await?;
        let found = found.map(|(role, status)| (role.parse::<Role>().ok(), status));
        match found {
            Some((Some(theirs), status)) if theirs.can_supervise() => {
                if let Some(role) = role.filter(|&r| theirs < r) {
                    invalid.add(
                        "supervisor_id",
                        format!(
                            "names a {theirs}, below the user's role ({role}): a user's \
                             supervisor holds a role at least as high"
                        ),
                    );
                } else if status != UserStatus::Active.as_str() && kept != Some(id) {
                    invalid.add("supervisor_id", "names a deactivated account");
                }
            }
            Some(_) => invalid.add(
                "supervisor_id",
                "must be a supervisor, backstopper or admin",
            ),
            None => invalid.add("supervisor_id", "no such user"),
        }
    }
    Ok(())
}

/// The facility a user is given must exist and be active, unless `user` already has it (an
/// edit that sends the account's other fields back unchanged).
pub async fn check_facility<'e>(
    db: impl PgExecutor<'e>,
    facility_id: Option<Uuid>,
    user: Option<Uuid>,
    invalid: &mut Invalid,
) -> Result<(), ApiError> {
    if let Some(id) = facility_id {
        let found: Option<(String, bool)> = sqlx::query_as(
            "SELECT f.status, EXISTS (SELECT 1 FROM users u WHERE u.id = $2 AND u.facility_id = f.id)
             FROM facilities f WHERE f.id = $1",
        )
        .bind(id)
        .bind(user)
        .fetch_optional(db)
        .await?;
        match found {
            None => invalid.add("facility_id", "no such facility"),
            Some((status, kept)) if status != "active" && !kept => {
                invalid.add("facility_id", format!("the facility is {status}"))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Share-locks the facility a user is being given until the transaction commits: it cannot be
/// deactivated before the user is written (checked with [`check_facility`] once it is held).
pub async fn lock_facility(
    tx: &mut PgConnection,
    facility_id: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    if let Some(id) = facility_id {
        sqlx::query("SELECT 1 FROM facilities WHERE id = $1 FOR SHARE")
            .bind(id)
            .execute(tx)
            .await?;
    }
    Ok(())
}
