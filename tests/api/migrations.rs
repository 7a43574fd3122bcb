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

/// Everything the migrations define in `public`, one line each: columns, indexes, constraints,
/// triggers, functions (with a digest of their body), types and sequences; not what the
/// extensions they create bring (extensions stay, as other databases of the server may use them).
async fn schema(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT item FROM (
           SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' '
                  || is_nullable || ' ' || coalesce(column_default, '') AS item
           FROM information_schema.columns
           WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'
           UNION ALL
           SELECT 'index ' || indexdef FROM pg_indexes
           WHERE schemaname = 'public' AND tablename <> '_sqlx_migrations'
           UNION ALL
           SELECT 'constraint ' || c.conrelid::regclass::text || ' ' || c.conname || ' '
                  || pg_get_constraintdef(c.oid)
           FROM pg_constraint c
           WHERE c.connamespace = 'public'::regnamespace
             AND c.conrelid <> '_sqlx_migrations'::regclass
           UNION ALL
           SELECT 'trigger ' || pg_get_triggerdef(t.oid)
           FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid
           WHERE r.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal
           UNION ALL
           SELECT 'function ' || p.oid::regprocedure::text || ' ' || md5(p.prosrc)
           FROM pg_proc p
           WHERE p.pronamespace = 'public'::regnamespace
             AND NOT EXISTS (SELECT 1 FROM pg_depend d
                             WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                               AND d.deptype = 'e')
           UNION ALL
           SELECT 'type ' || t.typname FROM pg_type t
           WHERE t.typnamespace = 'public'::regnamespace AND t.typtype IN ('e', 'd', 'r')
             AND NOT EXISTS (SELECT 1 FROM pg_depend d
                             WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid
                               AND d.deptype = 'e')
           UNION ALL
           SELECT 'sequence ' || sequence_name FROM information_schema.sequences
           WHERE sequence_schema = 'public'
         ) s ORDER BY 1",
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
    let defined = schema(&mut conn).await;
    for kind in ["column", "index", "constraint", "trigger", "function"] {
        assert!(
            defined
                .iter()
                .any(|item| item.starts_with(&format!("{kind} "))),
            "no {kind} in {defined:#?}"
        );
    }
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
    assert_eq!(schema(&mut conn).await, defined);

    // Down to nothing: every table, index, function, trigger and type is gone.
    MIGRATOR.undo(&mut conn, 0).await.unwrap();
    assert!(user_tables(&mut conn).await.is_empty());
    let left = schema(&mut conn).await;
    assert!(left.is_empty(), "left behind: {left:#?}");

    // And back up again, to the same schema.
    MIGRATOR.run(&mut conn).await.unwrap();
    assert_eq!(schema(&mut conn).await, defined);
    let latest: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(latest, latest_migration());
    conn.close().await.unwrap();
}

/// A migration that waits for a lock a long read holds (an export, a report) gives up after a
/// moment and is tried again, rather than hold every later query of the table behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_blocked_by_a_long_read_lets_other_queries_pass_and_applies_later() {
    let db = TestDb::new().await;
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    // Back to before the latest migration that alters a table (an index alone does not wait
    // for readers).
    let altering = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .filter(|m| m.sql.contains("ALTER TABLE") || m.sql.contains("TRIGGER"))
        .map(|m| m.version)
        .max()
        .unwrap();
    let previous = MIGRATOR
        .iter()
        .map(|m| m.version)
        .filter(|&v| v < altering)
        .max()
        .unwrap();
    MIGRATOR.undo(&mut conn, previous).await.unwrap();
    // A long read of every table, so that whatever that migration alters is held.
    let tables = user_tables(&mut conn).await;
    let mut reader = PgConnection::connect(&db.url()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut reader).await.unwrap();
    for table in &tables {
        sqlx::query(&format!(r#"LOCK TABLE "{table}" IN ACCESS SHARE MODE"#))
            .execute(&mut reader)
            .await
            .unwrap();
    }
    // (Run beside the checks rather than spawned: the migrator's future is not `Send` to
    // every lifetime.)
    let url = db.url();
    let done = std::sync::atomic::AtomicBool::new(false);
    let migrating = async {
        let applied = field_attendance::db::migrate(&url).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        applied
    };
    // Another query of every table, once the migration waits: it waits at most the migration's
    // lock timeout, not as long as the long read.
    let checks = async {
        let mut other = PgConnection::connect(&db.url()).await.unwrap();
        let waiting = "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                       WHERE NOT l.granted AND a.datname = current_database()";
        let started = std::time::Instant::now();
        while sqlx::query_scalar::<_, i64>(waiting)
            .fetch_one(&mut other)
            .await
            .unwrap()
            == 0
        {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "the migration never waited: did it alter no table?"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let counts = tables
            .iter()
            .map(|t| format!(r#"(SELECT count(*) FROM "{t}")"#))
            .collect::<Vec<_>>()
            .join(" + ");
        tokio::time::timeout(
            std::time::Duration::from_secs(8),
            sqlx::query(&format!("SELECT {counts}")).execute(&mut other),
        )
        .await
        .expect("a query waited behind the migration for as long as the long read")
        .unwrap();
        assert!(
            !done.load(std::sync::atomic::Ordering::SeqCst),
            "the migration gave up"
        );
        sqlx::query("COMMIT").execute(&mut reader).await.unwrap();
    };
    let (applied, ()) = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        tokio::join!(migrating, checks)
    })
    .await
    .expect("the migration was not tried again");
    applied.unwrap();
    let latest: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(latest, latest_migration());
}

#[tokio::test]
async fn a_missing_database_is_created_once_by_instances_starting_together() {
    // Arrange: a name no database has (dropped afterwards with the guard).
    let db = TestDb {
        name: format!("fa_test_{}", uuid::Uuid::new_v4().simple()),
    };
    let url = db.url();

    // Act: three instances start at once.
    let create = field_attendance::db::create_database_if_missing;
    let (a, b, c) = tokio::join!(create(&url), create(&url), create(&url));

    // Assert: none fails, and the database is there to migrate.
    for result in [a, b, c] {
        result.unwrap();
    }
    create(&url).await.unwrap();
    field_attendance::db::migrate(&url).await.unwrap();
}

#[tokio::test]
async fn a_build_older_than_the_database_starts_on_it_when_it_has_every_migration_of_its_own() {
    let db = TestDb::empty().await;
    field_attendance::db::migrate(&db.url()).await.unwrap();
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    // A newer build's migration, applied by it during a rolling deploy.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES ($1, 'from a newer build', true, '\\x00', 1)",
    )
    .bind(latest_migration() + 1)
    .execute(&mut conn)
    .await
    .unwrap();
    field_attendance::db::migrate(&db.url())
        .await
        .expect("this build's migrations are all there: it starts");

    // One of its own missing beside the newer one: that database is not one it can serve.
    sqlx::query("UPDATE _sqlx_migrations SET success = false WHERE version = $1")
        .bind(latest_migration())
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(field_attendance::db::migrate(&db.url()).await.is_err());
}

#[tokio::test]
async fn a_command_on_a_database_without_migrations_says_to_run_migrate_which_prepares_it() {
    let db = TestDb::empty().await;
    let run = |command: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_field-attendance"))
            .arg(command)
            .env("DATABASE_URL", db.url())
            .env("JWT_SECRET", crate::helpers::JWT_SECRET)
            .env("LOG_LEVEL", "warn")
            .output()
            .unwrap()
    };
    let refused = run("seed");
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("run `field-attendance migrate` first"),
        "{said}"
    );
    assert!(run("migrate").status.success());
    let seeded = run("seed");
    assert!(
        seeded.status.success(),
        "{}",
        String::from_utf8_lossy(&seeded.stderr)
    );
}

#[tokio::test]
async fn codes_stored_with_other_spaces_are_respaced_unless_two_would_meet() {
    let db = TestDb::new().await;
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    let respacing = 20261210000019;
    MIGRATOR.undo(&mut conn, respacing - 1).await.unwrap();
    for code in [
        "KGL\u{A0}HC\u{200B} 001",
        "  HUY  HOS 1",
        "X\u{A0}1",
        "x 1",
        "HC-7",
    ] {
        sqlx::query(
            "INSERT INTO facilities (code, name, council_id, latitude, longitude)
             SELECT $1, 'Facility', id, -1.9, 30.1 FROM councils WHERE name = 'Gasabo'",
        )
        .bind(code)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    field_attendance::db::migrate(&db.url()).await.unwrap();
    let codes: Vec<String> = sqlx::query_scalar("SELECT code FROM facilities ORDER BY code")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        codes,
        ["HC-7", "HUY HOS 1", "KGL HC 001", "X\u{A0}1", "x 1"]
    );
    for code in &codes[..3] {
        assert_eq!(&field_attendance::domain::facility_code(code), code);
    }
}

#[tokio::test]
async fn types_stored_with_doubled_or_other_spaces_are_keyed_as_the_service_keys_them() {
    let db = TestDb::new().await;
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    let rekeying = 20261212000024;
    MIGRATOR.undo(&mut conn, rekeying - 1).await.unwrap();
    // As the service stored them before: lower-cased, each space or hyphen one underscore.
    let stored = [
        "health__center",
        "health\u{a0}center",
        "_district\u{200b}_hospital_",
        "hôpital",
        "_",
    ];
    for (i, kind) in stored.iter().enumerate() {
        sqlx::query(
            "INSERT INTO facilities (code, name, type, council_id, latitude, longitude)
             SELECT $1, 'Facility', $2, id, -1.9, 30.1 FROM councils WHERE name = 'Gasabo'",
        )
        .bind(format!("HC-{i}"))
        .bind(kind)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    field_attendance::db::migrate(&db.url()).await.unwrap();
    let types: Vec<String> = sqlx::query_scalar("SELECT type FROM facilities ORDER BY code")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        types,
        [
            "health_center",
            "health_center",
            "district_hospital",
            "hôpital",
            "_"
        ]
    );
    for (kind, before) in types.iter().zip(stored) {
        assert_eq!(&field_attendance::db::facilities::type_key(before), kind);
    }
}
