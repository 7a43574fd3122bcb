//! The audit trail: one `activities` row per critical operation, written in the same
//! transaction as the change it describes.

use serde_json::Value;
use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use uuid::Uuid;

use crate::auth::{AuthUser, ClientInfo};

pub struct Activity {
    actor_id: Option<Uuid>,
    actor_email: Option<String>,
    action: &'static str,
    entity_type: Option<&'static str>,
    entity_id: Option<Uuid>,
    details: Value,
    ip: Option<String>,
    user_agent: Option<String>,
}

impl Activity {
    pub fn new(action: &'static str) -> Self {
        Self {
            actor_id: None,
            actor_email: None,
            action,
            entity_type: None,
            entity_id: None,
            details: Value::Object(Default::default()),
            ip: None,
            user_agent: None,
        }
    }

    pub fn by(mut self, actor: &AuthUser) -> Self {
        self.actor_id = Some(actor.id);
        self.actor_email = Some(actor.email.clone());
        self
    }

    pub fn by_id(mut self, id: Uuid, email: &str) -> Self {
        self.actor_id = Some(id);
        self.actor_email = Some(email.to_string());
        self
    }

    pub fn on(mut self, entity_type: &'static str, id: Uuid) -> Self {
        self.entity_type = Some(entity_type);
        self.entity_id = Some(id);
        self
    }

    pub fn from(mut self, client: &ClientInfo) -> Self {
        self.ip = client.ip.clone();
        self.user_agent = client.user_agent.clone();
        self
    }

    pub fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub async fn record<'e>(self, executor: impl sqlx::PgExecutor<'e>) -> Result<(), sqlx::Error> {
        let sql = format!("{INSERT} {}", values(1));
        // No row comes back; `query_as` only so that one `bind` serves both statements.
        executor
            .execute(self.bind(sqlx::query_as::<_, (bool,)>(&sql)))
            .await?;
        Ok(())
    }

    /// Records this row alone, for a refusal that answers whatever happens to its trail: a row
    /// that cannot be written is logged instead, and the client still gets the refusal (with
    /// its `Retry-After`, say) rather than a 503.
    pub async fn record_or_warn(self, db: &sqlx::PgPool) {
        let action = self.action;
        if let Err(error) = self.record(db).await {
            tracing::warn!(%error, action, "an activity was not recorded");
        }
    }

    /// A data-modifying CTE named `activity` that writes this row as part of a larger statement
    /// (one round trip for a change and its audit row); `bind` supplies its values from `$first`.
    pub fn cte(first: usize) -> String {
        format!("activity AS ({INSERT} {})", values(first))
    }

    /// Binds this row's eight values, in the order `cte` numbers them.
    pub fn bind<'q, O>(
        self,
        query: QueryAs<'q, Postgres, O, PgArguments>,
    ) -> QueryAs<'q, Postgres, O, PgArguments> {
        query
            .bind(self.actor_id)
            .bind(self.actor_email)
            .bind(self.action)
            .bind(self.entity_type)
            .bind(self.entity_id)
            .bind(self.details)
            .bind(self.ip)
            .bind(self.user_agent)
    }
}

/// The details of an edit: the `fields` it sent, and `changes`, `{field: {from, to}}` for each
/// of them whose value differs between the row before the edit and after it (each read as
/// `to_jsonb` of the row).
pub fn edit(before: &Value, after: &Value, fields: &[&str]) -> Value {
    let changes: serde_json::Map<String, Value> = fields
        .iter()
        .filter(|f| before[**f] != after[**f])
        .map(|f| {
            let change = serde_json::json!({ "from": before[*f], "to": after[*f] });
            (f.to_string(), change)
        })
        .collect();
    serde_json::json!({ "fields": fields, "changes": changes })
}

/// Whether an edit's details (from [`edit`]) name no value that changed: the form was sent back
/// as it was, and the edit is to write nothing and record nothing.
pub fn changes_nothing(details: &Value) -> bool {
    details["changes"].as_object().is_some_and(|c| c.is_empty())
}

const INSERT: &str = "INSERT INTO activities (actor_id, actor_email, action, entity_type, entity_id, details, ip, user_agent)";

/// `VALUES ($first, ..., $first + 7)`.
fn values(first: usize) -> String {
    let params: Vec<String> = (first..first + 8).map(|i| format!("${i}")).collect();
    format!("VALUES ({})", params.join(", "))
}

/// A data-modifying CTE named `audit` recording `action` on each row that the CTE `a` wrote (an
/// `entity_type` row), by the actor of the row of the CTE `c` with the same id: `c` has the
/// columns `user_id`, `email`, `details`, `ip` and `user_agent`. A set of writes and their audit
/// rows then take one statement.
pub fn audit_cte(action: &'static str, entity_type: &'static str) -> String {
    format!(
        "audit AS (
             {INSERT}
             SELECT c.user_id, c.email, '{action}', '{entity_type}', a.id, c.details, c.ip, c.user_agent
             FROM a JOIN c ON c.id = a.id
         )"
    )
}

/// An `INSERT … SELECT` writing an `attendance.auto_close` row, with no actor, for each shift in
/// the CTE `closed` (`id, user_id, clock_in_at`): a shift closed as incomplete by no one, for
/// `reason` (a fixed text, never input).
pub fn auto_close_audit(reason: &'static str) -> String {
    format!(
        "INSERT INTO activities (action, entity_type, entity_id, details)
         SELECT 'attendance.auto_close', 'attendance', id,
                jsonb_build_object('user_id', user_id, 'clock_in_at', clock_in_at,
                                   'reason', '{reason}')
         FROM closed"
    )
}
