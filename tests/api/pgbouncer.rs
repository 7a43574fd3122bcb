//! sqlx through PgBouncer in transaction pooling mode, under concurrency.
//!
//! Old PgBouncers (< 1.21) mix up sqlx's prepared statements between clients and can return
//! another query's values without any error, so every value is checked, not only errors.

use futures::StreamExt;

use crate::helpers::{TestDb, require_pgbouncer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_queries_through_pgbouncer_return_their_own_values() {
    let Some(bouncer) = require_pgbouncer("pgbouncer concurrent queries") else {
        return;
    };
    let db = TestDb::new().await;
    let url = format!("{}/{}", bouncer.trim_end_matches('/'), db.name);
    let config = field_attendance::config::DbSettings {
        url: url.clone().into(),
        migration_url: db.url().into(),
        migration_url_from: "MIGRATION_DATABASE_URL",
        min_connections: 0,
        max_connections: 60,
        acquire_timeout: std::time::Duration::from_secs(30),
        idle_timeout: std::time::Duration::from_secs(10),
        startup_wait: std::time::Duration::ZERO,
    };
    // The application's own pool settings (no extra_float_digits, default statement cache).
    let pool = field_attendance::db::pool(&config).unwrap();
    sqlx::query("CREATE TABLE bouncer_probe (id bigint PRIMARY KEY, label text NOT NULL, score float8 NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();

    const N: i64 = 4000;
    let failures: Vec<String> = futures::stream::iter(0..N)
        .map(|i| {
            let pool = pool.clone();
            async move { probe(&pool, i).await.err() }
        })
        .buffer_unordered(500)
        .filter_map(|r| async move { r })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "{} of {N} queries failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // Every write landed exactly once with its own values.
    let (count, sum): (i64, f64) = sqlx::query_as("SELECT count(*), sum(score) FROM bouncer_probe")
        .fetch_one(&pool)
        .await
        .unwrap();
    let ids: Vec<i64> = (0..N).filter(|i| i % 3 == 1).collect();
    assert_eq!(count as usize, ids.len());
    let expected: f64 = ids.iter().map(|&i| i as f64 / 7.0).sum();
    assert!((sum - expected).abs() < 1e-6, "{sum} vs {expected}");
    pool.close().await;
}

/// One query of one of three shapes (with different parameter types, interleaved as different
/// handlers' queries are in the service), checking that the answer is its own.
async fn probe(pool: &sqlx::PgPool, i: i64) -> Result<(), String> {
    match i % 3 {
        0 => {
            let (a, b): (i64, String) = sqlx::query_as("SELECT $1::int8 * 2, $2::text || '!'")
                .bind(i)
                .bind(format!("n{i}"))
                .fetch_one(pool)
                .await
                .map_err(|e| e.to_string())?;
            if a == i * 2 && b == format!("n{i}!") {
                Ok(())
            } else {
                Err(format!("{i}: got {a} {b}"))
            }
        }
        1 => {
            let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
            sqlx::query("INSERT INTO bouncer_probe (id, label, score) VALUES ($1, $2, $3)")
                .bind(i)
                .bind(format!("row {i}"))
                .bind(i as f64 / 7.0)
                .execute(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
            let label: String = sqlx::query_scalar("SELECT label FROM bouncer_probe WHERE id = $1")
                .bind(i)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
            tx.commit().await.map_err(|e| e.to_string())?;
            if label == format!("row {i}") {
                Ok(())
            } else {
                Err(format!("{i}: got {label}"))
            }
        }
        _ => {
            let id = uuid::Uuid::new_v4();
            let (u, f, n): (uuid::Uuid, f64, i32) =
                sqlx::query_as("SELECT $1::uuid, $2::float8 + 0.5, length($3::text)")
                    .bind(id)
                    .bind(i as f64)
                    .bind("x".repeat((i % 50) as usize))
                    .fetch_one(pool)
                    .await
                    .map_err(|e| e.to_string())?;
            if u == id && f == i as f64 + 0.5 && n as i64 == i % 50 {
                Ok(())
            } else {
                Err(format!("{i}: got {u} {f} {n}"))
            }
        }
    }
}

#[tokio::test]
async fn a_first_start_through_pgbouncer_creates_migrates_and_seeds_its_database() {
    let Some(bouncer) = require_pgbouncer("first start through pgbouncer") else {
        return;
    };
    // A database that does not exist yet, as on a new machine (dropped after the test).
    let db = TestDb {
        name: format!("fa_test_{}", uuid::Uuid::new_v4().simple()),
    };
    let mut env =
        crate::helpers::test_env(&format!("{}/{}", bouncer.trim_end_matches('/'), db.name));
    env.insert("MIGRATION_DATABASE_URL".into(), db.url());
    env.insert("RUN_MIGRATIONS".into(), "true".into());
    let app = crate::helpers::TestApp::spawn_on(db, env).await;
    let (status, _) = app
        .login(crate::helpers::ADMIN_EMAIL, crate::helpers::ADMIN_PASSWORD)
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
}
