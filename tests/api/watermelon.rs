//! The WatermelonDB protocol's server rules (the Node client test drives the library itself).

use chrono::{Duration, SubsecRound, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, TestUser, assert_error, assert_invalid, send};

fn raw(id: Uuid, facility: Uuid, notes: &str) -> Value {
    let start = (Utc::now() - Duration::hours(5)).timestamp_millis();
    json!({
        "id": id, "facility_id": facility, "clock_in_at": start, "clock_out_at": start + 3_600_000,
        "clock_in_latitude": -1.9456, "clock_in_longitude": 30.127, "clock_out_latitude": -1.9456,
        "clock_out_longitude": 30.127, "notes": notes, "_status": "created", "_changed": "",
    })
}

async fn pull(app: &TestApp, user: &TestUser, last: Option<i64>) -> Value {
    let query = last
        .map(|t| format!("?last_pulled_at={t}"))
        .unwrap_or_default();
    let (status, body) = send(
        app.get(&format!("/api/sync/watermelon{query}"))
            .bearer_auth(&user.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Clocks the user in online at the test facility's site; the record.
async fn clock_in_online(app: &TestApp, user: &TestUser) -> Value {
    let (status, online) = send(
        app.post("/api/attendance/clock-in")
            .bearer_auth(&user.token)
            .json(&json!({"latitude": -1.9456, "longitude": 30.127})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{online}");
    online
}

/// `n` closed shifts of the user's, one every two hours back from now, written as a sync would.
async fn closed_history(app: &TestApp, user: &TestUser, facility: Uuid, n: usize) {
    sqlx::query(
        "INSERT INTO attendance (user_id, facility_id, status, clock_in_at, clock_out_at,
                                 clock_in_latitude, clock_in_longitude, clock_out_latitude,
                                 clock_out_longitude, distance_m, source)
         SELECT $1, $2, 'closed', now() - make_interval(hours => 2 * g + 2),
                now() - make_interval(hours => 2 * g + 1), -1.9456, 30.127, -1.9456, 30.127,
                0, 'sync'
         FROM generate_series(1, $3) g",
    )
    .bind(user.id)
    .bind(facility)
    .bind(n as i32)
    .execute(&app.db)
    .await
    .unwrap();
}

/// Adds a page's records to those of the pages before it, none of which it may send again.
fn add_unseen(seen: &mut Vec<String>, page: &Value) {
    let rest = updated_ids(page);
    assert!(
        rest.iter().all(|id| !seen.contains(id)),
        "no record twice across the pages"
    );
    seen.extend(rest);
}

/// The ids of a pull's attendance records (all come as `updated`), in the order sent.
fn updated_ids(body: &Value) -> Vec<String> {
    body["changes"]["attendance"]["updated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

async fn push(app: &TestApp, user: &TestUser, last: i64, changes: Value) -> (StatusCode, Value) {
    send(
        app.post(&format!("/api/sync/watermelon?last_pulled_at={last}"))
            .bearer_auth(&user.token)
            .json(&json!({"changes": changes})),
    )
    .await
}

/// Pushes `changes`, which the server must apply whole (204).
async fn push_whole(app: &TestApp, user: &TestUser, last: i64, changes: Value) {
    let (status, body) = push(app, user, last, changes).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}

#[tokio::test]
async fn push_and_pull_follow_the_watermelondb_backend_rules() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(-1.9456, 30.127).await;
    let user = app.quick_user("focal", None, facility).await;
    let first = pull(&app, &user, None).await;
    let t1 = first["timestamp"].as_i64().unwrap();
    assert!(t1 > 0);
    assert_eq!(
        first["changes"]["facilities"]["updated"][0]["id"],
        json!(facility)
    );

    // Created records, an update of a record the server never had (created), a delete of a
    // missing one (ignored).
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    push_whole(&app, &user, t1, json!({"attendance": {
        "created": [raw(a, facility, "a")], "updated": [raw(b, facility, "b")], "deleted": [Uuid::new_v4()]
    }})).await;

    // Pushing "created" again (the earlier push landed unseen) updates, never duplicates.
    let (status, _) = push(&app, &user, pull(&app, &user, Some(t1)).await["timestamp"].as_i64().unwrap(),
        json!({"attendance": {"created": [raw(a, facility, "a, again")], "updated": [], "deleted": []}})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let notes: Vec<String> = sqlx::query_scalar("SELECT notes FROM attendance ORDER BY notes")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(notes, vec!["a, again", "b"]);

    // Since t1: both records are new to that pull, yet `updated`, with no id twice, and without
    // WatermelonDB's local bookkeeping columns. The device may be the one that pushed them and
    // have deleted one since: as `created`, WatermelonDB would recreate it and lose the
    // deletion; as `updated`, it keeps the deletion and creates what it lacks.
    let since = pull(&app, &user, Some(t1)).await;
    let updated = since["changes"]["attendance"]["updated"]
        .as_array()
        .unwrap();
    assert_eq!(updated.len(), 2);
    assert!(
        updated
            .iter()
            .all(|r| r.get("_status").is_none() && r.get("_changed").is_none())
    );
    assert_eq!(since["changes"]["attendance"]["created"], json!([]));
    let t2 = since["timestamp"].as_i64().unwrap();

    // Another device changes `a`; a push based on t2 touching `a` is refused whole.
    sqlx::query("UPDATE attendance SET notes = 'server edit' WHERE id = $1")
        .bind(a)
        .execute(&app.db)
        .await
        .unwrap();
    let (status, body) = push(&app, &user, t2, json!({"attendance": {
        "created": [raw(Uuid::new_v4(), facility, "new")], "updated": [raw(a, facility, "stale")], "deleted": []
    }})).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(
        app.attendance_rows().await,
        2,
        "nothing of the refused push applied"
    );
    let later = pull(&app, &user, Some(t2)).await;
    assert_eq!(
        later["changes"]["attendance"]["updated"][0]["notes"], "server edit",
        "an older record goes to updated"
    );

    // Deleted on the server: a late edit does not resurrect it, and the pull lists the id.
    let t3 = later["timestamp"].as_i64().unwrap();
    let (status, _) = push(
        &app,
        &user,
        t3,
        json!({"attendance": {"created": [], "updated": [], "deleted": [b]}}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = push(&app, &user, pull(&app, &user, Some(t3)).await["timestamp"].as_i64().unwrap(),
        json!({"attendance": {"created": [], "updated": [raw(b, facility, "late edit")], "deleted": []}})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let deleted: bool =
        sqlx::query_scalar("SELECT deleted_at IS NOT NULL FROM attendance WHERE id = $1")
            .bind(b)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(deleted);
    assert_eq!(
        pull(&app, &user, Some(t3)).await["changes"]["attendance"]["deleted"],
        json!([b])
    );
}

#[tokio::test]
async fn bad_records_other_users_records_and_unknown_timestamps_are_refused() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(-1.9456, 30.127).await;
    let owner = app.quick_user("focal", None, facility).await;
    let other = app.quick_user("focal", None, facility).await;
    let t = pull(&app, &owner, None).await["timestamp"]
        .as_i64()
        .unwrap();
    let id = Uuid::new_v4();
    assert_eq!(
        push(
            &app,
            &owner,
            t,
            json!({"attendance": {"created": [raw(id, facility, "mine")]}})
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );

    let t_other = pull(&app, &other, None).await["timestamp"]
        .as_i64()
        .unwrap();
    // Another user's record is refused on its own, the rest of the push applied.
    let theirs = Uuid::new_v4();
    let (status, body) = push(
        &app,
        &other,
        t_other,
        json!({"attendance": {"updated": [raw(id, facility, "stolen")], "created": [raw(theirs, facility, "own")]}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["experimentalRejectedIds"]["attendance"], json!([id]));
    assert_eq!(stored_notes(&app, id).await, "mine");
    assert_eq!(stored_notes(&app, theirs).await, "own");

    // Records the rules refuse are left out and named, as WatermelonDB reads them; the rest of
    // the push is applied.
    let (future_id, ok_id) = (Uuid::new_v4(), Uuid::new_v4());
    let mut future = raw(future_id, facility, "x");
    future["clock_in_at"] = json!((Utc::now() + Duration::hours(2)).timestamp_millis());
    let mut not_uuid = raw(Uuid::new_v4(), facility, "x");
    not_uuid["id"] = json!("aB3dE5fG7hJ9kL1m");
    // A UUID in capitals would come back from a pull in lower case, as another record.
    let shouted = Uuid::new_v4().to_string().to_uppercase();
    let mut upper = raw(Uuid::new_v4(), facility, "x");
    upper["id"] = json!(shouted);
    let (status, body) = push(
        &app,
        &owner,
        t,
        json!({"attendance": {
            "created": [future, raw(ok_id, facility, "ok"), not_uuid, upper],
            "deleted": ["not-an-id"],
        }}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut refused: Vec<&str> = body["experimentalRejectedIds"]["attendance"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    refused.sort();
    let mut expected = vec![
        future_id.to_string(),
        "aB3dE5fG7hJ9kL1m".into(),
        "not-an-id".into(),
        shouted.clone(),
    ];
    expected.sort();
    assert_eq!(refused, expected);
    let why = body["reasons"][format!("attendance.{future_id}")][0]
        .as_str()
        .unwrap();
    assert!(why.contains("clock_in_at"), "{why}");
    let trail: Value = sqlx::query_scalar(
        "SELECT details FROM activities WHERE action = 'sync.watermelon_push'
         ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(trail["rejected"], 4, "{trail}");
    assert!(
        trail["refused"][future_id.to_string()].is_array(),
        "{trail}"
    );
    // A facility edited on the device, and a record of a table the server does not sync (one
    // the app keeps on the device alone), are refused one by one beside a shift that is stored:
    // WatermelonDB sends them again at every sync, and refused whole the push would keep the
    // device's shifts from the server for good.
    let (draft, beside) = (Uuid::new_v4(), Uuid::new_v4());
    let (status, body) = push(
        &app,
        &owner,
        t,
        json!({
            "facilities": {"updated": [{"id": facility, "name": "renamed"}]},
            "drafts": {"created": [{"id": draft, "text": "kept on the phone"}]},
            "attendance": {"created": [raw(beside, facility, "beside")]},
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["experimentalRejectedIds"],
        json!({"attendance": [], "facilities": [facility], "drafts": [draft]})
    );
    assert!(
        body["reasons"][format!("facilities.{facility}")][0]
            .as_str()
            .unwrap()
            .contains("read-only"),
        "{body}"
    );
    let stored: (String, Option<String>) = sqlx::query_as(
        "SELECT f.name, a.notes FROM facilities f, attendance a WHERE f.id = $1 AND a.id = $2",
    )
    .bind(facility)
    .bind(beside)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_ne!(stored.0, "renamed");
    assert_eq!(stored.1.as_deref(), Some("beside"));
    // A table whose name no app's schema could hold, which the refusals' keys could not tell
    // from a record's: a malformed push.
    let (status, body) = push(
        &app,
        &owner,
        t,
        json!({"local.drafts": {"created": [{"id": Uuid::new_v4()}]}}),
    )
    .await;
    assert_invalid(status, &body, "changes.local.drafts");
    // One record twice in a push: one write would undo the other.
    let twice = Uuid::new_v4();
    for changes in [
        json!({"created": [raw(twice, facility, "x")], "deleted": [twice]}),
        json!({"created": [raw(twice, facility, "x")], "updated": [raw(twice, facility, "y")]}),
        json!({"updated": [raw(id, facility, "edit")], "deleted": [id]}),
    ] {
        let (status, body) = push(&app, &owner, t, json!({ "attendance": changes })).await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        let details = body["error"]["details"].as_object().unwrap();
        let named = |id: Uuid| details.contains_key(&format!("attendance.{id}"));
        assert!(named(twice) || named(id), "{body}");
    }
    let (status, body) = push(&app, &owner, 987_654_321, json!({"attendance": {}})).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    // A negative number is no timestamp issued, nor a first sync.
    for last in ["-1", "-987654321"] {
        let (status, body) = send(
            app.get(&format!("/api/sync/watermelon?last_pulled_at={last}"))
                .bearer_auth(&owner.token),
        )
        .await;
        assert_invalid(status, &body, "last_pulled_at");
    }
    let notes: Vec<String> = sqlx::query_scalar("SELECT notes FROM attendance ORDER BY notes")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(notes, ["beside", "mine", "ok", "own"]);
}

#[tokio::test]
async fn a_push_postgres_ends_to_break_a_deadlock_is_applied_again() {
    // The push writes `first`, then waits on `second`, which another transaction holds
    // uncommitted; that one then waits on `first`. Postgres ends the push (the other waits
    // longer before it looks for a deadlock), and the push is applied again: it waits on
    // `second` until the other lets go.
    let app = TestApp::spawn().await;
    let facility = app.facility_at(-1.9456, 30.127).await;
    let user = app.quick_user("focal", None, facility).await;
    let last = pull(&app, &user, None).await["timestamp"].as_i64().unwrap();
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let mut other = app.db.begin().await.unwrap();
    sqlx::query("SET LOCAL deadlock_timeout = '10s'")
        .execute(&mut *other)
        .await
        .unwrap();
    let hold = |id: Uuid| {
        sqlx::query(
            "INSERT INTO attendance (id, user_id, facility_id, status, clock_in_at,
                                     clock_in_latitude, clock_in_longitude)
             VALUES ($1, $2, $3, 'incomplete', now() - interval '1 day', 0, 0)",
        )
        .bind(id)
        .bind(user.id)
        .bind(facility)
    };
    hold(second).execute(&mut *other).await.unwrap();
    let deadlock = async {
        app.until_waiting_on_rows(1, "the push waits on the held row")
            .await;
        // Waits until Postgres has ended the push.
        hold(first).execute(&mut *other).await.unwrap();
        other.rollback().await.unwrap();
    };
    let ((status, body), ()) = tokio::join!(
        push(
            &app,
            &user,
            last,
            json!({"attendance": {
                "created": [raw(first, facility, "first"), raw(second, facility, "second")],
                "updated": [], "deleted": []
            }}),
        ),
        deadlock,
    );
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let notes: Vec<String> = sqlx::query_scalar("SELECT notes FROM attendance ORDER BY notes")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(notes, vec!["first", "second"]);
}

/// A record of `user` stored directly, as the server would hold it after an earlier sync.
async fn stored(
    app: &TestApp,
    user: &TestUser,
    facility: Uuid,
    clock_in: chrono::DateTime<Utc>,
    clock_out: Option<chrono::DateTime<Utc>>,
) -> Uuid {
    let status = if clock_out.is_some() {
        "closed"
    } else {
        "open"
    };
    let out = clock_out.map(|_| (-1.9456, 30.127));
    sqlx::query_scalar(
        "INSERT INTO attendance (user_id, facility_id, status, clock_in_at, clock_out_at,
                                 clock_in_latitude, clock_in_longitude, clock_out_latitude,
                                 clock_out_longitude, distance_m, source)
         VALUES ($1, $2, $3, $4, $5, -1.9456, 30.127, $6, $7, 0, 'sync') RETURNING id",
    )
    .bind(user.id)
    .bind(facility)
    .bind(status)
    .bind(clock_in)
    .bind(clock_out)
    .bind(out.map(|o| o.0))
    .bind(out.map(|o| o.1))
    .fetch_one(&app.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_librarys_own_requests_never_leave_a_device_stuck() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(-1.9456, 30.127).await;
    let user = app.quick_user("focal", None, facility).await;
    // Times to the millisecond, as the device keeps them.
    let at = |ago: Duration| {
        chrono::DateTime::from_timestamp_millis((Utc::now() - ago).timestamp_millis()).unwrap()
    };
    let old = stored(
        &app,
        &user,
        facility,
        at(Duration::days(40)),
        Some(at(Duration::days(40) - Duration::hours(3))),
    )
    .await;
    let forgotten = stored(&app, &user, facility, at(Duration::hours(17)), None).await;

    // The first sync, as the library's documented pullChanges sends it.
    let (status, first) = send(
        app.get("/api/sync/watermelon?last_pulled_at=null&schema_version=1&migration=null")
            .bearer_auth(&user.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let t = first["timestamp"].as_i64().unwrap();
    let pulled = |id: Uuid| {
        first["changes"]["attendance"]["updated"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == json!(id))
            .cloned()
            .unwrap()
    };
    // A note added to a shift older than the time limit; the clock-out of a shift just past the
    // maximum, before the sweep closed it; and the app's local-only table, sent empty.
    let mut noted = pulled(old);
    noted["notes"] = json!("added a month later");
    let mut clocked_out = pulled(forgotten);
    clocked_out["clock_out_at"] = json!(Utc::now().timestamp_millis());
    clocked_out["clock_out_latitude"] = json!(-1.9456);
    clocked_out["clock_out_longitude"] = json!(30.127);
    let (status, body) = push(
        &app,
        &user,
        t,
        json!({
            "attendance": {"created": [], "updated": [noted, clocked_out], "deleted": []},
            "drafts": {"created": [], "updated": [], "deleted": []},
        }),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let rows: Vec<(Uuid, String, Option<String>, bool)> = sqlx::query_as(
        "SELECT id, status, notes, clock_out_at IS NOT NULL FROM attendance ORDER BY clock_in_at",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (
                old,
                "closed".into(),
                Some("added a month later".into()),
                true
            ),
            // Longer than the maximum shift: kept as sent, counted as incomplete.
            (forgotten, "incomplete".into(), None, true),
        ]
    );
    // A shift the device itself dates older than the limit (a phone whose date reset) is still
    // refused, but alone: the device's other records reach the server, and the refused one is
    // named so that WatermelonDB keeps it on the device rather than marking it synced.
    let (ancient_id, fresh_id) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ancient = raw(ancient_id, facility, "x");
    ancient["clock_in_at"] = json!(at(Duration::days(40)).timestamp_millis());
    ancient["clock_out_at"] = json!(at(Duration::days(40) - Duration::hours(1)).timestamp_millis());
    let (status, body) = push(
        &app,
        &user,
        t,
        json!({"attendance": {"created": [ancient, raw(fresh_id, facility, "fresh")]}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["experimentalRejectedIds"],
        json!({"attendance": [ancient_id]})
    );
    let kept: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM attendance WHERE id = ANY($1)")
        .bind([ancient_id, fresh_id])
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(kept, [fresh_id]);
}

#[tokio::test]
async fn a_shift_opened_offline_beside_one_opened_online_leaves_the_later_one_open() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(-1.9456, 30.127).await;
    for (offline_minutes_from_now, offline_stays_open) in [(-120, false), (2, true)] {
        let user = app.quick_user("focal", None, facility).await;
        let online = clock_in_online(&app, &user).await;
        let t = pull(&app, &user, None).await["timestamp"].as_i64().unwrap();
        let id = Uuid::new_v4();
        let mut offline = raw(id, facility, "offline");
        offline["clock_in_at"] =
            json!((Utc::now() + Duration::minutes(offline_minutes_from_now)).timestamp_millis());
        offline["clock_out_at"] = Value::Null;
        offline["clock_out_latitude"] = Value::Null;
        offline["clock_out_longitude"] = Value::Null;
        let (status, body) = push(
            &app,
            &user,
            t,
            json!({"attendance": {"created": [offline]}}),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        let status_of = |id: Uuid| {
            sqlx::query_scalar::<_, String>("SELECT status FROM attendance WHERE id = $1")
                .bind(id)
                .fetch_one(&app.db)
        };
        let online_id: Uuid = online["id"].as_str().unwrap().parse().unwrap();
        let (offline_status, online_status) = (
            status_of(id).await.unwrap(),
            status_of(online_id).await.unwrap(),
        );
        if offline_stays_open {
            assert_eq!(
                (offline_status.as_str(), online_status.as_str()),
                ("open", "incomplete")
            );
        } else {
            assert_eq!(
                (offline_status.as_str(), online_status.as_str()),
                ("incomplete", "open")
            );
        }
    }
}

/// The ids of the attendance records a pull sends, created or updated.
fn pulled_ids(body: &Value) -> Vec<String> {
    let mut ids: Vec<String> = ["created", "updated"]
        .iter()
        .flat_map(|k| body["changes"]["attendance"][k].as_array().unwrap().clone())
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn old_timestamps_once_thinned_still_pull_every_change_since() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(-1.9456, 30.127).await;
    let user = app.quick_user("focal", None, facility).await;
    let t1 = pull(&app, &user, None).await["timestamp"].as_i64().unwrap();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    push_whole(
        &app,
        &user,
        t1,
        json!({"attendance": {
            "created": [raw(a, facility, "a")], "updated": [], "deleted": []
        }}),
    )
    .await;
    let t2 = pull(&app, &user, Some(t1)).await["timestamp"]
        .as_i64()
        .unwrap();
    push_whole(
        &app,
        &user,
        t2,
        json!({"attendance": {
            "created": [raw(b, facility, "b")], "updated": [], "deleted": []
        }}),
    )
    .await;
    let exact: Vec<Vec<String>> = vec![
        pulled_ids(&pull(&app, &user, Some(t1)).await),
        pulled_ids(&pull(&app, &user, Some(t2)).await),
    ];
    assert_eq!(exact[1], vec![b.to_string()]);
    // The latest timestamp: those below it (t1, t2 and the two just issued) form one range.
    let t3 = pull(&app, &user, Some(t2)).await["timestamp"]
        .as_i64()
        .unwrap();
    let stored = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sync_snapshots")
            .fetch_one(&app.db)
            .await
            .unwrap()
    };
    let before = stored().await;

    // Nothing is thinned while it is recent.
    let keep = std::time::Duration::from_secs(3600);
    let thin = || field_attendance::sync::watermelon::thin_snapshots(&app.db, keep, t3);
    assert_eq!(thin().await.unwrap(), 0);
    // A month on, every timestamp below t3 shares one snapshot.
    sqlx::query("UPDATE sync_snapshots SET created_at = created_at - interval '30 days'")
        .execute(&app.db)
        .await
        .unwrap();
    assert!(thin().await.unwrap() > 0);
    assert!(stored().await < before);
    assert_eq!(thin().await.unwrap(), 0, "thinning twice changes nothing");

    // t1 still pulls exactly what it did; t2 pulls at least what it did (here, also `a`).
    assert_eq!(pulled_ids(&pull(&app, &user, Some(t1)).await), exact[0]);
    let thinned = pull(&app, &user, Some(t2)).await;
    let from_t2 = pulled_ids(&thinned);
    assert!(
        exact[1].iter().all(|id| from_t2.contains(id)),
        "{from_t2:?}"
    );
    // All as updates: WatermelonDB would recreate a "created" record the device has deleted
    // and not pushed yet.
    for table in ["attendance", "facilities"] {
        assert_eq!(thinned["changes"][table]["created"], json!([]), "{thinned}");
    }
    // t3 and later timestamps are untouched; numbers never issued are refused.
    assert_eq!(
        pulled_ids(&pull(&app, &user, Some(t3)).await),
        Vec::<String>::new()
    );
    let (status, body) = send(
        app.get(&format!(
            "/api/sync/watermelon?last_pulled_at={}",
            t3 + 1000
        ))
        .bearer_auth(&user.token),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    // Nor is anything but a whole number a timestamp: a bad query string.
    for malformed in ["abc", "", "1.5"] {
        let (status, body) = send(
            app.get(&format!("/api/sync/watermelon?last_pulled_at={malformed}"))
                .bearer_auth(&user.token),
        )
        .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    }
}

#[tokio::test]
async fn a_clock_out_stamped_just_before_an_online_clock_in_ends_the_shift_where_it_began() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(-1.9456, 30.127).await;
    let user = app.quick_user("focal", None, facility).await;
    // Clocked in online (the server holds microseconds); the app pulls it in milliseconds.
    let online = clock_in_online(&app, &user).await;
    let first = pull(&app, &user, None).await;
    let t = first["timestamp"].as_i64().unwrap();
    let mut record = first["changes"]["attendance"]["updated"][0].clone();
    // The phone's clock, set back by network time, stamps the clock-out a minute before.
    let clock_in = record["clock_in_at"].as_i64().unwrap();
    record["clock_out_at"] = json!(clock_in - 60_000);
    record["clock_out_latitude"] = json!(-1.9456);
    record["clock_out_longitude"] = json!(30.127);
    push_whole(&app, &user, t, json!({"attendance": {"updated": [record]}})).await;
    let (status, closed) = send(
        app.get(&format!(
            "/api/attendance/{}",
            online["id"].as_str().unwrap()
        ))
        .bearer_auth(&user.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(closed["status"], "closed", "{closed}");
    assert_eq!(closed["clock_out_at"], online["clock_in_at"], "{closed}");
}

#[tokio::test]
async fn a_pulled_record_edited_on_the_device_is_not_checked_again_as_new_times() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(-1.9456, 30.127).await;
    let user = app.quick_user("focal", None, facility).await;
    // Clocked in and out online 40 days ago: the server holds microseconds.
    let clock_in = Utc::now() - Duration::days(40);
    let id = app
        .insert_attendance(
            user.id,
            facility,
            clock_in,
            Some(clock_in + Duration::hours(8)),
            "closed",
        )
        .await;
    sqlx::query(
        "UPDATE attendance SET clock_out_latitude = -1.9456, clock_out_longitude = 30.127
         WHERE id = $1",
    )
    .bind(id)
    .execute(&app.db)
    .await
    .unwrap();
    let first = pull(&app, &user, None).await;
    let t = first["timestamp"].as_i64().unwrap();
    let mut record = first["changes"]["attendance"]["updated"][0].clone();
    assert_eq!(record["id"], json!(id));
    // The app adds a note and sends the record back, its times in milliseconds as pulled.
    record["notes"] = json!("signed by the in-charge");
    push_whole(&app, &user, t, json!({"attendance": {"updated": [record]}})).await;
    let (notes, stored_in): (String, chrono::DateTime<Utc>) =
        sqlx::query_as("SELECT notes, clock_in_at FROM attendance WHERE id = $1")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(notes, "signed by the in-charge");
    assert_eq!(
        stored_in,
        clock_in.trunc_subsecs(6),
        "the stored time is kept whole"
    );
}

#[tokio::test]
async fn deleting_the_servers_open_shift_leaves_the_devices_own_open() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(-1.9456, 30.127).await;
    let user = app.quick_user("focal", None, facility).await;
    let online = clock_in_online(&app, &user).await;
    let t = pull(&app, &user, None).await["timestamp"].as_i64().unwrap();
    // The device's own shift began earlier; the online one was a double clock-in it deletes.
    let id = Uuid::new_v4();
    let mut own = raw(id, facility, "own");
    own["clock_in_at"] = json!((Utc::now() - Duration::hours(2)).timestamp_millis());
    own["clock_out_at"] = Value::Null;
    own["clock_out_latitude"] = Value::Null;
    own["clock_out_longitude"] = Value::Null;
    push_whole(
        &app,
        &user,
        t,
        json!({"attendance": {"created": [own], "deleted": [online["id"]]}}),
    )
    .await;
    let (own_status, online_deleted): (String, bool) = sqlx::query_as(
        "SELECT (SELECT status FROM attendance WHERE id = $1),
                (SELECT deleted_at IS NOT NULL FROM attendance WHERE id = $2)",
    )
    .bind(id)
    .bind(online["id"].as_str().unwrap().parse::<Uuid>().unwrap())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((own_status.as_str(), online_deleted), ("open", true));
}

#[tokio::test]
async fn a_supervisor_pulling_from_a_thinned_timestamp_is_told_a_departed_workers_records_are_gone()
{
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let facility = app.facility_at(-1.9456, 30.127).await;
    let supervisor = app.user("supervisor", None).await;
    let worker = app.quick_user("focal", Some(supervisor.id), facility).await;
    // Before the worker's record: what the thinned timestamp will see.
    let early: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let record = crate::sync::closed_shift(&app, worker.id, facility).await;
    let first = pull(&app, &supervisor, None).await;
    assert_eq!(pulled_ids(&first), std::slice::from_ref(&record));
    let timestamp = first["timestamp"].as_i64().unwrap();
    // Thinned as after two weeks: it sees only what an older timestamp of its range saw.
    sqlx::query(
        "UPDATE sync_snapshots
         SET snapshot = format('%s:%s:', pg_snapshot_xmin($2::pg_snapshot),
                               pg_snapshot_xmin($2::pg_snapshot))::pg_snapshot
         WHERE id = $1",
    )
    .bind(timestamp)
    .bind(&early)
    .execute(&app.db)
    .await
    .unwrap();

    crate::sync::move_under(&app, &admin, worker.id, None).await;
    let after = pull(&app, &supervisor, Some(timestamp)).await;
    assert_eq!(
        after["changes"]["attendance"]["deleted"],
        json!([record]),
        "{after}"
    );
}

async fn stored_notes(app: &TestApp, id: Uuid) -> String {
    sqlx::query_scalar("SELECT notes FROM attendance WHERE id = $1 AND deleted_at IS NULL")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_supervisors_device_sending_back_team_records_has_them_refused_and_its_own_applied() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(-1.9456, 30.127).await;
    let supervisor = app.user("supervisor", None).await;
    let worker = app.quick_user("focal", Some(supervisor.id), facility).await;
    let (edited, deleted) = (Uuid::new_v4(), Uuid::new_v4());
    let t = pull(&app, &worker, None).await["timestamp"]
        .as_i64()
        .unwrap();
    let mut second = raw(deleted, facility, "second");
    second["clock_in_at"] = json!((Utc::now() - Duration::hours(30)).timestamp_millis());
    second["clock_out_at"] = json!((Utc::now() - Duration::hours(29)).timestamp_millis());
    push_whole(
        &app,
        &worker,
        t,
        json!({"attendance": {"created": [raw(edited, facility, "worker's"), second]}}),
    )
    .await;

    // The supervisor's app pulls the team's records, edits one, deletes another, and clocks
    // its own user in offline; it sends all of that, and a new record it filled in for the
    // worker.
    let pulled = pull(&app, &supervisor, None).await;
    let mut team = pulled_ids(&pulled);
    team.sort();
    let mut expected = vec![edited.to_string(), deleted.to_string()];
    expected.sort();
    assert_eq!(team, expected, "{pulled}");
    let mut edit = pulled["changes"]["attendance"]["updated"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == edited.to_string())
        .unwrap()
        .clone();
    edit["notes"] = json!("supervisor's edit");
    edit["_status"] = json!("updated");
    let (own, for_worker) = (Uuid::new_v4(), Uuid::new_v4());
    let mut filled_in = raw(for_worker, facility, "filled in");
    filled_in["user_id"] = json!(worker.id);
    let (status, body) = push(
        &app,
        &supervisor,
        pulled["timestamp"].as_i64().unwrap(),
        json!({"attendance": {
            "created": [raw(own, facility, "supervisor's own"), filled_in],
            "updated": [edit],
            "deleted": [deleted],
        }}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut refused: Vec<String> = body["experimentalRejectedIds"]["attendance"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    refused.sort();
    let mut expected = vec![
        edited.to_string(),
        deleted.to_string(),
        for_worker.to_string(),
    ];
    expected.sort();
    assert_eq!(refused, expected, "{body}");
    for id in &refused {
        let why = body["reasons"][format!("attendance.{id}")][0]
            .as_str()
            .unwrap();
        assert!(why.starts_with("user_id"), "{why}");
    }
    // The worker's records are as the worker left them; the supervisor's own went in.
    assert_eq!(stored_notes(&app, edited).await, "worker's");
    assert_eq!(stored_notes(&app, deleted).await, "second");
    assert_eq!(stored_notes(&app, own).await, "supervisor's own");
    let owner: Uuid = sqlx::query_scalar("SELECT user_id FROM attendance WHERE id = $1")
        .bind(own)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(owner, supervisor.id);
    let filled: i64 = sqlx::query_scalar("SELECT count(*) FROM attendance WHERE id = $1")
        .bind(for_worker)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(filled, 0);
}

#[tokio::test]
async fn an_edit_from_another_device_to_a_forgotten_shift_is_not_overwritten() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(-1.9456, 30.127).await;
    let user = app.quick_user("focal", None, facility).await;
    // Open longer than the maximum shift; the periodic sweep has not closed it yet.
    let clock_in = chrono::DateTime::from_timestamp_millis(
        (Utc::now() - Duration::hours(17)).timestamp_millis(),
    )
    .unwrap();
    let forgotten = stored(&app, &user, facility, clock_in, None).await;
    let first = pull(&app, &user, None).await;
    let t = first["timestamp"].as_i64().unwrap();
    // Another device of the user writes a note after this one pulled.
    sqlx::query("UPDATE attendance SET notes = 'from the other phone' WHERE id = $1")
        .bind(forgotten)
        .execute(&app.db)
        .await
        .unwrap();
    let mut mine = first["changes"]["attendance"]["updated"][0].clone();
    assert_eq!(mine["id"], json!(forgotten));
    mine["notes"] = json!("from this phone");
    let (status, body) = push(&app, &user, t, json!({"attendance": {"updated": [mine]}})).await;
    // The push closes the forgotten shift itself; that write must not hide the other's.
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let notes: Option<String> = sqlx::query_scalar("SELECT notes FROM attendance WHERE id = $1")
        .bind(forgotten)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(notes.as_deref(), Some("from the other phone"));
}

#[tokio::test]
async fn a_push_sent_again_after_its_answer_was_lost_is_not_a_conflict() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(-1.9456, 30.127).await;
    let user = app.quick_user("focal", None, facility).await;
    let kept = stored(
        &app,
        &user,
        facility,
        Utc::now().trunc_subsecs(3) - Duration::hours(30),
        Some(Utc::now().trunc_subsecs(3) - Duration::hours(22)),
    )
    .await;
    let doomed = stored(
        &app,
        &user,
        facility,
        Utc::now().trunc_subsecs(3) - Duration::hours(20),
        Some(Utc::now().trunc_subsecs(3) - Duration::hours(12)),
    )
    .await;
    let first = pull(&app, &user, None).await;
    let t = first["timestamp"].as_i64().unwrap();
    let mut edited = first["changes"]["attendance"]["updated"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == json!(kept))
        .unwrap()
        .clone();
    edited["notes"] = json!("signed by the nurse in charge");
    let new = Uuid::new_v4();
    let changes = json!({"attendance": {
        "created": [raw(new, facility, "new")], "updated": [edited], "deleted": [doomed],
    }});
    let (status, body) = push(&app, &user, t, changes.clone()).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    // The answer was lost; the app sends the same push, on the same timestamp.
    let (status, body) = push(&app, &user, t, changes).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let rows: Vec<(Uuid, Option<String>, bool)> = sqlx::query_as(
        "SELECT id, notes, deleted_at IS NOT NULL FROM attendance ORDER BY clock_in_at",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (kept, Some("signed by the nurse in charge".into()), false),
            (doomed, None, true),
            (new, Some("new".into()), false),
        ]
    );
    // Another device's edit since the pull is still a conflict.
    sqlx::query("UPDATE attendance SET notes = 'from the other phone' WHERE id = $1")
        .bind(kept)
        .execute(&app.db)
        .await
        .unwrap();
    let mut stale = first["changes"]["attendance"]["updated"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == json!(kept))
        .unwrap()
        .clone();
    stale["notes"] = json!("signed by the nurse in charge");
    let (status, body) = push(&app, &user, t, json!({"attendance": {"updated": [stale]}})).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
}

#[tokio::test]
async fn a_pull_larger_than_a_page_completes_over_several_syncs_each_going_on() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(-1.9456, 30.127).await;
    let user = app.quick_user("focal", None, facility).await;
    let stranger = app.quick_user("focal", None, facility).await;
    let page = field_attendance::sync::watermelon::PULL_PAGE;
    let total = page + 700;
    closed_history(&app, &user, facility, total).await;

    // Other devices' timestamps around this one's, for the thinning below.
    for _ in 0..2 {
        pull(&app, &stranger, None).await;
    }
    let first = pull(&app, &user, None).await;
    assert_eq!(first["has_more"], true);
    let t1 = first["timestamp"].as_i64().unwrap();
    for _ in 0..4 {
        pull(&app, &stranger, None).await;
    }
    let mut seen = updated_ids(&first);
    // The facilities come first, which a new device needs to clock in; the history fills the
    // rest of the page.
    let facilities = first["changes"]["facilities"]["updated"]
        .as_array()
        .unwrap();
    assert_eq!(facilities.len(), 1, "{}", first["changes"]["facilities"]);
    assert_eq!(facilities[0]["id"], json!(facility));
    assert_eq!(seen.len(), page - 1);
    // Between the pages: the phone edits a record it has, and pushes on the page's timestamp.
    let mut edited = first["changes"]["attendance"]["updated"][0].clone();
    edited["notes"] = json!("edited on the phone");
    let (status, body) = push(
        &app,
        &user,
        t1,
        json!({"attendance": {"updated": [edited]}}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    // A record the pages have yet to send: the device's copy is older than the server's (kept
    // from before its sync began over), and would overwrite it whole.
    let unsent: Uuid = sqlx::query_scalar(
        "SELECT id FROM attendance WHERE user_id = $1 AND NOT (id::text = ANY($2))
         ORDER BY change_xid DESC, id DESC LIMIT 1",
    )
    .bind(user.id)
    .bind(&seen)
    .fetch_one(&app.db)
    .await
    .unwrap();
    let version = || async {
        sqlx::query_scalar::<_, i32>("SELECT sync_version FROM attendance WHERE id = $1")
            .bind(unsent)
            .fetch_one(&app.db)
            .await
            .unwrap()
    };
    let before = version().await;
    let (status, body) = push(
        &app,
        &user,
        t1,
        json!({"attendance": {"updated": [raw(unsent, facility, "kept on the phone")]}}),
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(version().await, before);
    // Thinning old timestamps (in pairs: this one shares its pair with another device's)
    // leaves a pull that stopped partway where it was.
    let thinned =
        field_attendance::sync::watermelon::thin_snapshots(&app.db, std::time::Duration::ZERO, 2)
            .await
            .unwrap();
    assert!(thinned > 0, "other timestamps were thinned");
    // An app upgraded to a schema with new columns, partway through its first sync, gets the
    // tables whole.
    let migration = r#"{"from":1,"tables":["attendance"],"columns":[]}"#;
    let (status, migrated) = send(
        app.get("/api/sync/watermelon")
            .query(&[
                ("last_pulled_at", t1.to_string().as_str()),
                ("migration", migration),
            ])
            .bearer_auth(&user.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", migrated["timestamp"]);
    assert_eq!(migrated["has_more"], false);
    // All but the record edited since the pages began, which the next pull sends.
    assert_eq!(updated_ids(&migrated).len(), total - 1);
    // Another user cannot go on with it.
    let (status, body) = send(
        app.get(&format!("/api/sync/watermelon?last_pulled_at={t1}"))
            .bearer_auth(&stranger.token),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );

    let second = pull(&app, &user, Some(t1)).await;
    assert_eq!(second["has_more"], false, "{}", second["timestamp"]);
    add_unseen(&mut seen, &second);
    // Every record came once over the two pages.
    assert_eq!(seen.len(), total);
    assert_eq!(second["changes"]["facilities"]["updated"], json!([]));
    let third = pull(&app, &user, second["timestamp"].as_i64()).await;
    assert_eq!(third["has_more"], false);
    let changed = &third["changes"]["attendance"]["updated"];
    assert_eq!(changed.as_array().unwrap().len(), 1, "{changed}");
    assert_eq!(changed[0]["notes"], "edited on the phone");
}

#[tokio::test]
async fn a_record_the_server_holds_may_be_named_in_capitals_as_an_older_service_took_it() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(-1.9456, 30.127).await;
    let user = app.quick_user("focal", None, facility).await;
    let t = pull(&app, &user, None).await["timestamp"].as_i64().unwrap();
    let id = Uuid::new_v4();
    push_whole(
        &app,
        &user,
        t,
        json!({"attendance": {"created": [raw(id, facility, "first")]}}),
    )
    .await;
    let t = pull(&app, &user, Some(t)).await["timestamp"]
        .as_i64()
        .unwrap();
    let mut edited = raw(id, facility, "edited");
    edited["id"] = json!(id.to_string().to_uppercase());
    push_whole(&app, &user, t, json!({"attendance": {"updated": [edited]}})).await;
    let notes: String = sqlx::query_scalar("SELECT notes FROM attendance WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(notes, "edited");
}

#[tokio::test]
async fn columns_an_apps_schema_lacks_keep_their_stored_values_and_a_null_clears_one() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(-1.9456, 30.127).await;
    let user = app.quick_user("focal", None, facility).await;
    let (status, online) = send(
        app.post("/api/attendance/clock-in")
            .bearer_auth(&user.token)
            .json(
                &json!({"latitude": -1.9456, "longitude": 30.127, "accuracy_m": 8.5,
                          "notes": "flat tyre"}),
            ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{online}");
    let id: Uuid = online["id"].as_str().unwrap().parse().unwrap();
    let first = pull(&app, &user, None).await;
    let t = first["timestamp"].as_i64().unwrap();
    let mut record = first["changes"]["attendance"]["updated"][0].clone();
    assert_eq!(record["id"], json!(id));
    // An older app, whose schema has neither notes nor accuracies, clocks the shift out.
    let record = record.as_object_mut().unwrap();
    for column in ["notes", "clock_in_accuracy_m", "clock_out_accuracy_m"] {
        record.remove(column);
    }
    let out = Utc::now().timestamp_millis();
    record.insert("clock_out_at".into(), json!(out));
    record.insert("clock_out_latitude".into(), json!(-1.9456));
    record.insert("clock_out_longitude".into(), json!(30.127));
    push_whole(&app, &user, t, json!({"attendance": {"updated": [record]}})).await;
    let kept: (Option<String>, Option<f64>, Option<chrono::DateTime<Utc>>) = sqlx::query_as(
        "SELECT notes, clock_in_accuracy_m, clock_out_at FROM attendance WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(kept.0.as_deref(), Some("flat tyre"));
    assert_eq!(kept.1, Some(8.5));
    assert_eq!(kept.2.map(|t| t.timestamp_millis()), Some(out));

    // An app that has the column and sends it null clears it.
    let second = pull(&app, &user, Some(t)).await;
    let t = second["timestamp"].as_i64().unwrap();
    let mut record = second["changes"]["attendance"]["updated"][0].clone();
    record["notes"] = Value::Null;
    push_whole(&app, &user, t, json!({"attendance": {"updated": [record]}})).await;
    let notes: Option<String> = sqlx::query_scalar("SELECT notes FROM attendance WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(notes, None);
}

#[tokio::test]
async fn columns_the_app_did_not_declare_optional_push_as_unset() {
    // Arrange: WatermelonDB fills an unset column not declared optional with "" or 0.
    let app = TestApp::spawn().await;
    let facility = app.facility_at(-1.9456, 30.127).await;
    let user = app.quick_user("focal", None, facility).await;
    let t = pull(&app, &user, None).await["timestamp"].as_i64().unwrap();
    let open_id = Uuid::new_v4();
    let mut open = raw(open_id, facility, "open");
    for (column, unset) in [
        ("user_id", json!("")),
        ("status", json!("")),
        ("clock_out_at", json!(0)),
        ("clock_out_latitude", json!(0)),
        ("clock_out_longitude", json!(0)),
    ] {
        open[column] = unset;
    }
    // A shift ended where the phone had no fix keeps the place it was sent with.
    let closed_id = Uuid::new_v4();
    let mut closed = raw(closed_id, facility, "closed");
    let start = Utc::now() - Duration::days(2);
    closed["clock_in_at"] = json!(start.timestamp_millis());
    closed["clock_out_at"] = json!((start + Duration::hours(1)).timestamp_millis());
    closed["clock_out_latitude"] = json!(0);
    closed["clock_out_longitude"] = json!(0);

    // Act
    let (status, body) = push(
        &app,
        &user,
        t,
        json!({"attendance": {"created": [open, closed]}}),
    )
    .await;

    // Assert: the open shift is stored as this user's, and pulls back with its columns unset.
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let pulled = pull(&app, &user, Some(t)).await;
    let pulled = pulled["changes"]["attendance"]["updated"]
        .as_array()
        .unwrap();
    let record = |id: Uuid| pulled.iter().find(|r| r["id"] == json!(id)).unwrap();
    let open = record(open_id);
    assert_eq!(
        (
            &open["user_id"],
            &open["status"],
            &open["clock_out_at"],
            &open["clock_out_latitude"],
        ),
        (&json!(user.id), &json!("open"), &Value::Null, &Value::Null),
        "{open}"
    );
    let closed = record(closed_id);
    assert_eq!(
        (&closed["status"], &closed["clock_out_latitude"]),
        (&json!("closed"), &json!(0.0)),
        "{closed}"
    );
}

#[tokio::test]
async fn deleting_a_shift_queued_as_a_conflict_withdraws_it_from_the_queue() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(-1.9456, 30.127).await;
    let user = app.quick_user("focal", None, facility).await;
    let admin = app.admin().await;
    clock_in_online(&app, &user).await;
    // An open shift pushed beside the online one, for an admin to settle.
    let queued = Uuid::new_v4();
    let at = (Utc::now() - Duration::minutes(30)).to_rfc3339();
    let (status, body) = send(
        app.post("/api/sync/push")
            .bearer_auth(&user.token)
            .json(&json!({
                "device_id": "device-A",
                "records": [{
                    "kind": "attendance", "op": "upsert", "id": queued, "sync_version": 1,
                    "client_timestamp": at, "conflict_strategy": "manual",
                    "data": {"facility_id": facility, "clock_in_at": at,
                             "clock_in_location": {"latitude": -1.9456, "longitude": 30.127}},
                }],
            })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["status"], "conflict", "{body}");
    let t = pull(&app, &user, None).await["timestamp"].as_i64().unwrap();
    let (status, body) = push(&app, &user, t, json!({"attendance": {"deleted": [queued]}})).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (_, queue) = send(app.get("/api/sync/conflicts").bearer_auth(&admin.token)).await;
    assert_eq!(queue["total"], 0, "withdrawn from the queue: {queue}");
}

#[tokio::test]
async fn an_upgraded_app_gets_the_migrated_tables_whole_and_what_was_deleted_since() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(-1.9456, 30.127).await;
    let user = app.quick_user("focal", None, facility).await;
    let t0 = pull(&app, &user, None).await["timestamp"].as_i64().unwrap();
    let (kept, gone, later) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    push_whole(&app, &user, t0, json!({"attendance": {"created": [raw(kept, facility, "kept"), raw(gone, facility, "gone")]}})).await;
    let t1 = pull(&app, &user, Some(t0)).await["timestamp"]
        .as_i64()
        .unwrap();
    // Since t1: one record deleted, another created, on another device of the user.
    push_whole(
        &app,
        &user,
        t1,
        json!({"attendance": {"created": [raw(later, facility, "later")], "deleted": [gone]}}),
    )
    .await;
    let migrated = |migration: &str| {
        send(
            app.get("/api/sync/watermelon")
                .query(&[
                    ("last_pulled_at", t1.to_string().as_str()),
                    ("schema_version", "2"),
                    ("migration", migration),
                ])
                .bearer_auth(&user.token),
        )
    };
    // The app's new schema added a column to attendance: the table comes whole (the record
    // unchanged since t1 too, for its new column), and the deletion since t1 with it.
    let (status, body) = migrated(
        r#"{"from":1,"tables":[],"columns":[{"table":"attendance","columns":["notes"]}]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut updated = updated_ids(&body);
    updated.sort();
    let mut whole = vec![kept.to_string(), later.to_string()];
    whole.sort();
    assert_eq!(updated, whole, "{body}");
    assert_eq!(body["changes"]["attendance"]["deleted"], json!([gone]));
    // Facilities, not migrated, come as changed since t1: none.
    assert_eq!(body["changes"]["facilities"]["updated"], json!([]));
    // Facilities migrated: the table whole.
    let (status, body) = migrated(r#"{"from":1,"tables":["facilities"],"columns":[]}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sites = body["changes"]["facilities"]["updated"].as_array().unwrap();
    assert!(sites.iter().any(|f| f["id"] == json!(facility)), "{body}");
    let updated = body["changes"]["attendance"]["updated"].as_array().unwrap();
    assert_eq!(updated.len(), 1, "only the record created since t1: {body}");
    // A migration that is not WatermelonDB's object.
    for malformed in ["{\"from\":", "[1,2]", "{\"tables\":\"attendance\"}"] {
        let (status, body) = migrated(malformed).await;
        assert_invalid(status, &body, "migration");
    }
}

#[tokio::test]
async fn a_sync_after_more_changes_than_a_page_goes_on_from_where_it_stopped() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(-1.9456, 30.127).await;
    let user = app.quick_user("focal", None, facility).await;
    let t0 = pull(&app, &user, None).await["timestamp"].as_i64().unwrap();
    // Since the last sync: more changes than a page holds (the history another device of the
    // user pushed, say).
    let page = field_attendance::sync::watermelon::PULL_PAGE;
    let total = page + 300;
    closed_history(&app, &user, facility, total).await;
    let first = pull(&app, &user, Some(t0)).await;
    assert_eq!(first["has_more"], true);
    let mut seen = updated_ids(&first);
    assert_eq!(seen.len(), page);
    // Between the pages, a record of the first page is deleted on the server.
    let deleted = seen[0].clone();
    app.delete_on_server(&deleted).await;
    let t1 = first["timestamp"].as_i64().unwrap();
    let second = pull(&app, &user, Some(t1)).await;
    assert_eq!(second["has_more"], false);
    add_unseen(&mut seen, &second);
    assert_eq!(seen.len(), total);
    // The deletion made while the pages were read comes with the next sync, not lost.
    let t2 = second["timestamp"].as_i64().unwrap();
    let third = pull(&app, &user, Some(t2)).await;
    assert_eq!(third["changes"]["attendance"]["deleted"], json!([deleted]));
    assert_eq!(third["has_more"], false);
    let t3 = third["timestamp"].as_i64().unwrap();
    let quiet = pull(&app, &user, Some(t3)).await;
    assert_eq!(updated_ids(&quiet), Vec::<String>::new());
    assert_eq!(quiet["changes"]["attendance"]["deleted"], json!([]));
}
