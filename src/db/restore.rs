//! A database restored from a logical dump (`pg_dump`) into another cluster keeps its rows'
//! change marks, which are transaction ids, but not the counter they came from. Marks ahead of
//! the new cluster's counter are invisible to every pull (a pull sends the rows its snapshot
//! sees), so even a first sync would come back empty until the counter caught up.

use sqlx::{Connection, PgConnection};

/// Serialises instances starting together over one restored database.
const RESTAMP_LOCK: i64 = 0x7265_7374_616d_7001;

/// Brings change marks ahead of this cluster's transaction counter back under it, once, after
/// a restore; nothing otherwise (no committed mark can be ahead of the counter that issued it).
/// Rows ahead are stamped with this transaction's id, so later snapshots see them. Every
/// WatermelonDB timestamp issued before now names a snapshot that sees nothing, so a device
/// syncing from one is sent everything again and told of every deletion, a superset, never
/// short; a push from one meets the records it changes as changed on the server (409), pulls,
/// and pushes again. Returns whether anything was ahead.
pub async fn restamp_after_restore(url: &str) -> Result<bool, sqlx::Error> {
    let mut conn = PgConnection::connect_with(&super::connect_options(url)?).await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(RESTAMP_LOCK)
        .execute(&mut *tx)
        .await?;
    // Indexed maxima: this runs at every start.
    let ahead: bool = sqlx::query_scalar(
        "SELECT coalesce(greatest((SELECT max(change_xid) FROM attendance),
                                  (SELECT max(change_xid) FROM facilities),
                                  (SELECT max(xid) FROM scope_changes),
                                  (SELECT max(scope_reset_xid) FROM users))
                         >= pg_snapshot_xmax(pg_current_snapshot()), false)",
    )
    .fetch_one(&mut *tx)
    .await?;
    if !ahead {
        drop(tx);
        conn.close().await?;
        return Ok(false);
    }
    tracing::warn!(
        "rows carry change marks ahead of this database's transaction counter (a logical \
         restore into another cluster): restamping them, and sending every WatermelonDB device \
         everything again"
    );
    // The marks, not `updated_at`: the stamping triggers stay out of it.
    sqlx::raw_sql(
        "CREATE TEMP TABLE restamp_mark ON COMMIT DROP AS
             SELECT pg_snapshot_xmax(pg_current_snapshot()) AS counter;
         ALTER TABLE attendance DISABLE TRIGGER attendance_stamp;
         UPDATE attendance
            SET created_xid = CASE WHEN created_xid >= m.counter THEN pg_current_xact_id()
                                   ELSE created_xid END,
                change_xid = pg_current_xact_id()
           FROM restamp_mark m WHERE change_xid >= m.counter;
         ALTER TABLE attendance ENABLE TRIGGER attendance_stamp;
         ALTER TABLE facilities DISABLE TRIGGER facilities_stamp;
         UPDATE facilities
            SET created_xid = CASE WHEN created_xid >= m.counter THEN pg_current_xact_id()
                                   ELSE created_xid END,
                change_xid = pg_current_xact_id()
           FROM restamp_mark m WHERE change_xid >= m.counter;
         ALTER TABLE facilities ENABLE TRIGGER facilities_stamp;
         UPDATE scope_changes SET xid = pg_current_xact_id()
           FROM restamp_mark m WHERE xid >= m.counter;
         ALTER TABLE users DISABLE TRIGGER users_updated_at;
         UPDATE users SET scope_reset_xid = pg_current_xact_id()
           FROM restamp_mark m WHERE scope_reset_xid >= m.counter;
         ALTER TABLE users ENABLE TRIGGER users_updated_at;
         UPDATE sync_snapshots SET snapshot = '1:1:', resume = NULL;",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    conn.close().await?;
    Ok(true)
}
