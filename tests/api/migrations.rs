//! Migrations: idempotent, and every one reversible.

use field_attendance::db::{MIGRATOR, latest_migration};
use sqlx::{Connection, PgConnection};

use crate::helpers::TestDb;

async fn user_tables(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn migrations_applied_twice_are_a_no_op_and_every_down_reverts_cleanly() {
    let db = TestDb::empty().await;
    field_attendance::db::migrate(&db.url()).await.unwrap();
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    let tables = user_tables(&mut conn).await;
    for expected in [
        "activities",
        "attendance",
        "councils",
        "facilities",
        "facility_imports",
        "refresh_tokens",
        "regions",
        "sync_conflicts",
        "users",
    ] {
        assert!(
            tables.contains(&expected.to_string()),
            "{expected} missing: {tables:?}"
        );
    }

    // Second run: nothing to apply, nothing changes.
    field_attendance::db::migrate(&db.url()).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        applied as usize,
        MIGRATOR
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .count()
    );
    assert_eq!(user_tables(&mut conn).await, tables);

    // Down to nothing: every table and function is gone.
    MIGRATOR.undo(&mut conn, 0).await.unwrap();
    assert!(user_tables(&mut conn).await.is_empty());
    let functions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'public' AND p.proname IN ('set_updated_at', 'stamp_change', 'uuid_v7')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(functions, 0);

    // And back up again.
    MIGRATOR.run(&mut conn).await.unwrap();
    assert_eq!(user_tables(&mut conn).await, tables);
    let latest: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(latest, latest_migration());
    conn.close().await.unwrap();
}
