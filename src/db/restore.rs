//! A database restored from a logical dump (`pg_dump`) into another cluster keeps its rows'
//! change marks and its stored sync positions, which are transaction ids, but not the counter
//! they came from. Marks ahead of the new cluster's counter are invisible to every pull (a pull
//! sends the rows its snapshot sees), so even a first sync would come back empty until the
//! counter caught up; positions ahead of it would, once it has, take rows written since the
//! restore for rows already sent.

use sqlx::{Connection, PgConnection};

/// Serialises instances starting together over one restored database.
const RESTAMP_LOCK: i64 = 0x7265_7374_616d_7001;

/// The tables with change marks, and the trigger that stamps each on update.
const MARKED: [(&str, &str); 2] = [
    ("attendance", "attendance_stamp"),
    ("facilities", "facilities_stamp"),
];

/// Brings change marks and stored sync positions ahead of this cluster's transaction counter
/// back under it, once, after a restore; nothing otherwise (no committed mark, and no snapshot
/// taken here, can be ahead of the counter that issued it). Rows ahead are stamped with this
/// transaction's id, so later snapshots see them, keeping their `updated_at`. Every WatermelonDB
/// timestamp issued before now names a snapshot that sees nothing, so a device syncing from one
/// is sent everything again and told of every deletion, a superset, never short; a push from
/// one meets the records it changes as changed on the server (409), pulls, and pushes again.
/// The sync epoch moves on, so every `/sync/pull` cursor issued before is refused. Returns
/// whether anything was ahead.
pub async fn restamp_after_restore(url: &str) -> Result<bool, sqlx::Error> {
    let mut conn = PgConnection::connect_with(&super::connect_options(url)?).await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(RESTAMP_LOCK)
        .execute(&mut *tx)
        .await?;
    // The marks' maxima come from their indexes, and the positions' from the newest kept (a
    // timestamp's snapshot is taken as it is numbered); the scope tables, of a row per change
    // of a team, are read whole.
    let ahead: bool = sqlx::query_scalar(
        "SELECT coalesce(greatest((SELECT max(change_xid) FROM attendance),
                                  (SELECT max(change_xid) FROM facilities),
                                  (SELECT max(xid) FROM scope_changes),
                                  (SELECT max(scope_reset_xid) FROM users))
                         >= pg_snapshot_xmax(pg_current_snapshot()), false)
             OR coalesce((SELECT max(pg_snapshot_xmax(snapshot))
                          FROM (SELECT snapshot FROM sync_snapshots ORDER BY id DESC LIMIT 64) s)
                         > pg_snapshot_xmax(pg_current_snapshot()), false)",
    )
    .fetch_one(&mut *tx)
    .await?;
    if !ahead {
        drop(tx);
        conn.close().await?;
        return Ok(false);
    }
    tracing::warn!(
        "change marks or sync positions lie ahead of this database's transaction counter (a \
         logical restore into another cluster): restamping them; WatermelonDB devices are sent \
         everything again, and /sync/pull cursors issued before are refused"
    );
    // Every table written, locked at once in one order, before any trigger is turned off.
    sqlx::raw_sql(
        "SET LOCAL lock_timeout = '30s';
         LOCK TABLE users, facilities, attendance, scope_changes, sync_snapshots, sync_epoch
             IN SHARE ROW EXCLUSIVE MODE;
         CREATE TEMP TABLE restamp_mark ON COMMIT DROP AS
             SELECT pg_snapshot_xmax(pg_current_snapshot()) AS counter;",
    )
    .execute(&mut *tx)
    .await?;
    // The marks, not `updated_at`: the stamping triggers stay out of it.
    for (table, trigger) in MARKED {
        sqlx::raw_sql(&format!(
            "ALTER TABLE {table} DISABLE TRIGGER {trigger};
             UPDATE {table}
                SET created_xid = CASE WHEN created_xid >= m.counter THEN pg_current_xact_id()
                                       ELSE created_xid END,
                    change_xid = pg_current_xact_id()
               FROM restamp_mark m WHERE change_xid >= m.counter;
             ALTER TABLE {table} ENABLE TRIGGER {trigger};"
        ))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::raw_sql(
        "UPDATE scope_changes SET xid = pg_current_xact_id()
           FROM restamp_mark m WHERE xid >= m.counter;
         ALTER TABLE users DISABLE TRIGGER users_updated_at;
         UPDATE users SET scope_reset_xid = pg_current_xact_id()
           FROM restamp_mark m WHERE scope_reset_xid >= m.counter;
         ALTER TABLE users ENABLE TRIGGER users_updated_at;
         UPDATE sync_snapshots SET snapshot = '1:1:', resume = NULL;
         UPDATE sync_epoch SET epoch = epoch + 1;",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    conn.close().await?;
    Ok(true)
}
