//! Users: the API representation with its facility → council → region hierarchy, the
//! supervision tree, and searches scoped to what the viewer may see.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgExecutor, PgPool, Postgres, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::domain::{Role, UserStatus};
use crate::error::{ApiError, ConstraintError, ErrorCode};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RegionRef {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CouncilRef {
    pub id: Uuid,
    pub name: String,
    pub region: RegionRef,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FacilityRef {
    pub id: Uuid,
    pub name: String,
    pub code: String,
    pub council: CouncilRef,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SupervisorRef {
    pub id: Uuid,
    pub first_name: String,
    pub last_name: String,
}

/// A user as the API shows it. Never carries the password hash.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    #[schema(required = true)]
    pub phone: Option<String>,
    #[schema(required = true)]
    pub employee_id: Option<String>,
    pub role: Role,
    pub status: UserStatus,
    #[schema(required = true)]
    pub facility: Option<FacilityRef>,
    #[schema(required = true)]
    pub supervisor: Option<SupervisorRef>,
    #[schema(required = true)]
    pub last_login_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// When the account last changed; a login, a wrong password or a lockout is no change.
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    email: String,
    first_name: String,
    last_name: String,
    phone: Option<String>,
    employee_id: Option<String>,
    role: String,
    status: String,
    last_login_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    facility_id: Option<Uuid>,
    facility_name: Option<String>,
    facility_code: Option<String>,
    council_id: Option<Uuid>,
    council_name: Option<String>,
    region_id: Option<Uuid>,
    region_name: Option<String>,
    supervisor_id: Option<Uuid>,
    supervisor_first_name: Option<String>,
    supervisor_last_name: Option<String>,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        let facility = match (r.facility_id, r.council_id, r.region_id) {
            (Some(id), Some(council_id), Some(region_id)) => Some(FacilityRef {
                id,
                name: r.facility_name.unwrap_or_default(),
                code: r.facility_code.unwrap_or_default(),
                council: CouncilRef {
                    id: council_id,
                    name: r.council_name.unwrap_or_default(),
                    region: RegionRef {
                        id: region_id,
                        name: r.region_name.unwrap_or_default(),
                    },
                },
            }),
            _ => None,
        };
        User {
            id: r.id,
            email: r.email,
            first_name: r.first_name,
            last_name: r.last_name,
            phone: r.phone,
            employee_id: r.employee_id,
            // The CHECK constraints guarantee these parse.
            role: r.role.parse().unwrap_or(Role::Tester),
            status: r.status.parse().unwrap_or(UserStatus::Inactive),
            facility,
            supervisor: r.supervisor_id.map(|id| SupervisorRef {
                id,
                first_name: r.supervisor_first_name.unwrap_or_default(),
                last_name: r.supervisor_last_name.unwrap_or_default(),
            }),
            last_login_at: r.last_login_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// The users with the ids in `$1`, in that order, each with its facility → council → region
/// and its supervisor. One fixed statement whatever the ids, so Postgres plans it once per
/// connection and reuses the plan.
const BY_IDS: &str = "
    SELECT u.id, u.email, u.first_name, u.last_name, u.phone, u.employee_id, u.role, u.status,
           u.last_login_at, u.created_at, u.updated_at,
           f.id AS facility_id, f.name AS facility_name, f.code AS facility_code,
           c.id AS council_id, c.name AS council_name, r.id AS region_id, r.name AS region_name,
           s.id AS supervisor_id, s.first_name AS supervisor_first_name,
           s.last_name AS supervisor_last_name
    FROM unnest($1::uuid[]) WITH ORDINALITY AS page (id, n)
    JOIN users u ON u.id = page.id
    LEFT JOIN facilities f ON f.id = u.facility_id
    LEFT JOIN councils c ON c.id = f.council_id
    LEFT JOIN regions r ON r.id = c.region_id
    LEFT JOIN users s ON s.id = u.supervisor_id
    ORDER BY page.n";

/// A user to insert; the password is already hashed.
pub struct NewUser<'a> {
    pub email: &'a str,
    pub password_hash: String,
    pub first_name: String,
    pub last_name: String,
    pub phone: Option<String>,
    pub employee_id: Option<String>,
    pub role: Role,
    pub status: UserStatus,
    pub facility_id: Option<Uuid>,
    pub supervisor_id: Option<Uuid>,
}

/// Inserts a user; a taken email or employee id is a 409 `duplicate`.
pub async fn insert<'e>(db: impl PgExecutor<'e>, user: NewUser<'_>) -> Result<Uuid, ApiError> {
    use crate::error::ResultExt;
    sqlx::query_scalar(
        "INSERT INTO users (email, password_hash, first_name, last_name, phone, employee_id,
                            role, status, facility_id, supervisor_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
    )
    .bind(user.email)
    .bind(user.password_hash)
    .bind(user.first_name)
    .bind(user.last_name)
    .bind(user.phone)
    .bind(user.employee_id)
    .bind(user.role.as_str())
    .bind(user.status.as_str())
    .bind(user.facility_id)
    .bind(user.supervisor_id)
    .fetch_one(db)
    .await
    .on_constraints(UNIQUE_FIELDS)
}

/// The users table's unique fields and the 409 each means.
pub const UNIQUE_FIELDS: &[ConstraintError<'static>] = &[
    ("users_email_key", || {
        ApiError::conflict(
            ErrorCode::Duplicate,
            "an account with this email already exists",
        )
    }),
    ("users_employee_id_key", || {
        ApiError::conflict(
            ErrorCode::Duplicate,
            "an account with this employee id already exists",
        )
    }),
];

/// Changes that can take an admin away (a role change, a deactivation) run one at a time, within
/// the caller's transaction: two admins removing each other at once would otherwise each see the
/// other still there, and leave none.
pub async fn lock_admin_roster(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('users.admins'))")
        .execute(conn)
        .await?;
    Ok(())
}

/// Changes to the supervision tree (a supervisor or a role) run one at a time, within the
/// caller's transaction: two concurrent edits could otherwise form a cycle, or rank a supervisor
/// below their report, that neither would see alone. `shared`: the tree is only held still
/// (a supervisor's edit of someone in their team), alongside other such holders.
pub async fn lock_tree(conn: &mut sqlx::PgConnection, shared: bool) -> Result<(), sqlx::Error> {
    sqlx::query(if shared {
        "SELECT pg_advisory_xact_lock_shared(hashtext('users.supervisor_id'))"
    } else {
        "SELECT pg_advisory_xact_lock(hashtext('users.supervisor_id'))"
    })
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether an active admin other than `id` remains (under [`lock_admin_roster`]).
pub async fn another_active_admin(
    conn: &mut sqlx::PgConnection,
    id: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin' AND status = 'active' AND id <> $1)",
    )
    .bind(id)
    .fetch_one(conn)
    .await
}

pub async fn find<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    Ok(by_ids(db, &[id]).await?.pop())
}

/// True when `ancestor` is above `user` in the supervision tree (at any depth).
pub async fn is_above<'e>(
    db: impl PgExecutor<'e>,
    ancestor: Uuid,
    user: Uuid,
) -> Result<bool, sqlx::Error> {
    // However deep, as the lists see the tree (`push_team`); UNION (not UNION ALL) stops at a
    // repeated id, so even a corrupted, cyclic tree terminates.
    sqlx::query_scalar(
        "WITH RECURSIVE chain (id) AS (
             SELECT supervisor_id FROM users WHERE id = $2
             UNION
             SELECT u.supervisor_id
             FROM users u JOIN chain c ON u.id = c.id
             WHERE c.id IS NOT NULL
         )
         SELECT EXISTS (SELECT 1 FROM chain WHERE id = $1)",
    )
    .bind(ancestor)
    .bind(user)
    .fetch_one(db)
    .await
}

/// Whether `viewer` may see `target`: themself, an admin, or a supervisor or backstopper above
/// them in the tree. Everyone else gets a 404 from the caller, never a 403.
pub async fn can_see(db: &PgPool, viewer: &AuthUser, target: Uuid) -> Result<bool, sqlx::Error> {
    if viewer.id == target || viewer.is_admin() {
        return Ok(true);
    }
    if viewer.role.is_field() {
        return Ok(false);
    }
    is_above(db, viewer.id, target).await
}

/// Appends `AND <column> IN (the viewer's team)` for supervisors and backstoppers; nothing for
/// admins. Field roles are limited to `<column> = viewer`.
pub fn push_scope(qb: &mut QueryBuilder<'_, Postgres>, viewer: &AuthUser, column: &str) {
    if viewer.is_admin() {
        return;
    }
    qb.push(format_args!(" AND {column}"));
    if viewer.role.is_field() {
        qb.push(" = ").push_bind(viewer.id);
    } else {
        qb.push(" IN ");
        push_team(qb, viewer.id);
    }
}

/// Records that `user` (and the team below them) moved from under `from` to under `to`, after
/// the move is written: the supervisors above the new place gain their records, those above
/// the old place lose them (see the `scope_changes` migration). The records themselves are not
/// written: a gaining device's next pull sends the live records of the users it gained whole,
/// whenever they last changed, so a record committed while the move did is not missed either.
pub async fn record_move(
    tx: &mut sqlx::PgConnection,
    user: Uuid,
    from: Option<Uuid>,
    to: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH RECURSIVE
           moved AS (SELECT $1::uuid AS id
                     UNION SELECT u.id FROM users u JOIN moved m ON u.supervisor_id = m.id),
           old_chain AS (SELECT id FROM users WHERE id = $2
                         UNION SELECT u.supervisor_id FROM users u JOIN old_chain c ON u.id = c.id
                         WHERE u.supervisor_id IS NOT NULL),
           new_chain AS (SELECT id FROM users WHERE id = $3
                         UNION SELECT u.supervisor_id FROM users u JOIN new_chain c ON u.id = c.id
                         WHERE u.supervisor_id IS NOT NULL),
           lost AS (SELECT id FROM old_chain EXCEPT SELECT id FROM new_chain),
           gained AS (SELECT id FROM new_chain EXCEPT SELECT id FROM old_chain)
         INSERT INTO scope_changes (viewer_id, user_id, granted)
         SELECT l.id, m.id, false FROM lost l CROSS JOIN moved m
         UNION ALL
         SELECT g.id, m.id, true FROM gained g CROSS JOIN moved m",
    )
    .bind(user)
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Like [`push_scope`], but supervisors also keep their own rows (their own attendance).
pub fn push_scope_with_self(qb: &mut QueryBuilder<'_, Postgres>, viewer: &AuthUser, column: &str) {
    if viewer.is_admin() || viewer.role.is_field() {
        return push_scope(qb, viewer, column);
    }
    qb.push(" AND ");
    push_self_and_team(qb, viewer.id, column);
}

/// `(<column> = user OR <column> IN (everyone below user))`: what `user` sees as a supervisor.
pub fn push_self_and_team(qb: &mut QueryBuilder<'_, Postgres>, user: Uuid, column: &str) {
    qb.push(format_args!("({column} = ")).push_bind(user);
    qb.push(format_args!(" OR {column} IN "));
    push_team(qb, user);
    qb.push(")");
}

/// `(SELECT id FROM <everyone below the supervisor, recursively>)`. UNION (not UNION ALL)
/// stops at a repeated id, so even a corrupted, cyclic tree terminates.
fn push_team(qb: &mut QueryBuilder<'_, Postgres>, supervisor: Uuid) {
    qb.push("(WITH RECURSIVE team AS (SELECT id FROM users WHERE supervisor_id = ");
    qb.push_bind(supervisor);
    qb.push(" UNION SELECT u.id FROM users u JOIN team t ON u.supervisor_id = t.id) SELECT id FROM team)");
}

#[derive(Debug, Default, Clone, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UserFilter {
    /// Matches part of a name, email, phone or employee id, whatever the case and accents
    /// (`theogene` finds Théogène).
    pub q: Option<String>,
    pub role: Option<Role>,
    pub status: Option<UserStatus>,
    pub facility_id: Option<Uuid>,
    pub council_id: Option<Uuid>,
    pub region_id: Option<Uuid>,
    pub supervisor_id: Option<Uuid>,
    /// Page number, from 1.
    #[param(minimum = 1, maximum = 100000, default = 1)]
    pub page: Option<u32>,
    /// Items per page, at most 100.
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub per_page: Option<u32>,
}

/// A page of users matching `filter` among those `viewer` may see, and the total count.
///
/// Two statements: the page's ids and the total, then the rows for those ids. Only the first
/// depends on the filter and the page; the second is one fixed statement whatever the page,
/// which Postgres plans once per connection and then reuses. Planning the joins afresh for
/// every page, as one statement did, took as long as running them.
pub async fn search(
    db: &PgPool,
    viewer: &AuthUser,
    filter: &UserFilter,
    limit: i64,
    offset: i64,
) -> Result<(Vec<User>, i64), sqlx::Error> {
    let mut ids = QueryBuilder::new("");
    if counted_by_triggers(viewer, filter) {
        // The page walks the created_at index from users alone, so a later page walks `offset`
        // index entries rather than fetching `offset` rows to throw them away, and the total
        // comes from the trigger-kept counts by role and status.
        ids.push("SELECT array(SELECT u.id");
        push_matching(&mut ids, viewer, filter);
        push_page(&mut ids, "u.", limit, offset);
        ids.push("), (SELECT coalesce(sum(n), 0)::bigint FROM user_counts WHERE true");
        if let Some(role) = filter.role {
            ids.push(" AND role = ").push_bind(role.as_str());
        }
        if let Some(status) = filter.status {
            ids.push(" AND status = ").push_bind(status.as_str());
        }
        ids.push(")");
    } else {
        // The matching rows must be counted, so the page is taken from the same matches, found
        // once. Walking the created_at index instead, and filtering as it goes, is what the
        // planner picks when it expects many matches; a search (whose trigram estimate can be
        // off by ten) then reads deep into the index to find 50 rare ones.
        ids.push("WITH matched AS MATERIALIZED (SELECT u.id, u.created_at");
        push_matching(&mut ids, viewer, filter);
        ids.push(") SELECT array(SELECT id FROM matched");
        push_page(&mut ids, "", limit, offset);
        ids.push("), (SELECT count(*) FROM matched)");
    }
    let (ids, total): (Vec<Uuid>, i64) = ids.build_query_as().fetch_one(db).await?;
    Ok((by_ids(db, &ids).await?, total))
}

/// The users with these ids, in this order (a user deleted meanwhile is left out).
async fn by_ids<'e>(db: impl PgExecutor<'e>, ids: &[Uuid]) -> Result<Vec<User>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<UserRow> = sqlx::query_as(BY_IDS).bind(ids).fetch_all(db).await?;
    Ok(rows.into_iter().map(User::from).collect())
}

/// ` ORDER BY … LIMIT … OFFSET …`, newest first, of a page over `u.` or the matched rows.
fn push_page(qb: &mut QueryBuilder<'_, Postgres>, alias: &str, limit: i64, offset: i64) {
    qb.push(format_args!(
        " ORDER BY {alias}created_at DESC, {alias}id DESC LIMIT "
    ))
    .push_bind(limit)
    .push(" OFFSET ")
    .push_bind(offset);
}

/// Whether the total can come from the counts that triggers keep by role and status: an
/// admin (who sees everyone) filtering by nothing else.
fn counted_by_triggers(viewer: &AuthUser, filter: &UserFilter) -> bool {
    viewer.is_admin()
        && filter.q.as_deref().is_none_or(|q| q.trim().is_empty())
        && filter.facility_id.is_none()
        && filter.council_id.is_none()
        && filter.region_id.is_none()
        && filter.supervisor_id.is_none()
}

/// `FROM … WHERE …` of the users `filter` matches among those `viewer` may see. The FROM is
/// users alone unless the filter reads the facility's council or region: Postgres plans every
/// page afresh (its parameters change the best plan), and joins it would only remove again cost
/// planning time on each one.
fn push_matching(qb: &mut QueryBuilder<'_, Postgres>, viewer: &AuthUser, filter: &UserFilter) {
    if filter.council_id.is_some() || filter.region_id.is_some() {
        qb.push(
            " FROM users u
              LEFT JOIN facilities f ON f.id = u.facility_id
              LEFT JOIN councils c ON c.id = f.council_id",
        );
    } else {
        qb.push(" FROM users u");
    }
    qb.push(" WHERE true");
    push_scope(qb, viewer, "u.id");
    if let Some(q) = filter.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        // Same expression as the trigram index users_search_idx: accents and case aside.
        qb.push(
            " AND search_key(u.first_name || ' ' || u.last_name || ' ' || u.email || ' ' || coalesce(u.phone, '') || ' '
                    || coalesce(u.employee_id, ''))",
        );
        push_containing(qb, q);
    }
    if let Some(role) = filter.role {
        qb.push(" AND u.role = ").push_bind(role.as_str());
    }
    if let Some(status) = filter.status {
        qb.push(" AND u.status = ").push_bind(status.as_str());
    }
    if let Some(id) = filter.facility_id {
        qb.push(" AND u.facility_id = ").push_bind(id);
    }
    if let Some(id) = filter.council_id {
        qb.push(" AND f.council_id = ").push_bind(id);
    }
    if let Some(id) = filter.region_id {
        qb.push(" AND c.region_id = ").push_bind(id);
    }
    if let Some(id) = filter.supervisor_id {
        qb.push(" AND u.supervisor_id = ").push_bind(id);
    }
}

/// ` LIKE` a pattern of the search term `q` anywhere, as `search_key()` keys text: keyed by
/// Postgres (Rust lowers some letters otherwise: a final sigma, a dotted capital I), and only
/// then with `%`, `_` and `\` escaped, so that they match literally (keying turns a full-width
/// `％` into `%`).
pub fn push_containing(qb: &mut QueryBuilder<'_, Postgres>, q: &str) {
    qb.push(" LIKE '%' || replace(replace(replace(search_key(")
        .push_bind(q.to_string())
        .push(r"), '\', '\\'), '%', '\%'), '_', '\_') || '%'");
}
