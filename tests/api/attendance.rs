//! Clock-in/out, geofence, time rules, forgotten clock-outs, scoping, exports and summaries.

use chrono::{Datelike, Duration, TimeZone, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, assert_error, assert_invalid, send};

/// The helper facilities stand here, with a 200 m geofence.
const SITE: (f64, f64) = (-1.9456, 30.1270);
/// Degrees of latitude per metre.
const DEG_PER_M: f64 = 1.0 / 111_195.0;

async fn user_at_site(
    app: &TestApp,
    role: &str,
    supervisor: Option<uuid::Uuid>,
) -> (TestUser, uuid::Uuid) {
    let user = app.user(role, supervisor).await;
    let facility: uuid::Uuid = sqlx::query_scalar("SELECT facility_id FROM users WHERE id = $1")
        .bind(user.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    (user, facility)
}

fn at_site() -> Value {
    json!({"latitude": SITE.0, "longitude": SITE.1, "accuracy_m": 8.0})
}

async fn clock_in(app: &TestApp, user: &TestUser, body: Value) -> (StatusCode, Value) {
    send(
        app.post("/api/attendance/clock-in")
            .bearer_auth(&user.token)
            .json(&body),
    )
    .await
}

async fn clock_out(app: &TestApp, user: &TestUser, body: Value) -> (StatusCode, Value) {
    send(
        app.post("/api/attendance/clock-out")
            .bearer_auth(&user.token)
            .json(&body),
    )
    .await
}

/// [`at_site`], with `occurred_at` this far from now (before it when negative).
fn at_site_stamped(from_now: Duration) -> Value {
    let mut body = at_site();
    body["occurred_at"] = json!((Utc::now() + from_now).to_rfc3339());
    body
}

/// Sends `request`, a clock-out whose answer `first` was lost, again after the user clocked in
/// to `next`: it answers with the shift it closed, and `next` stays open.
async fn clock_out_sent_again(
    app: &TestApp,
    user: &TestUser,
    request: Value,
    first: &Value,
    next: &Value,
) {
    let (status, again) = clock_out(app, user, request).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(&again, first, "the shift that clock-out closed");
    let (_, active) = send(app.get("/api/attendance/active").bearer_auth(&user.token)).await;
    assert_eq!(active["attendance"]["id"], next["id"]);
    assert_eq!(active["attendance"]["status"], "open");
}

#[tokio::test]
async fn clock_in_active_clock_out_round_trip_with_duration() {
    let app = TestApp::spawn().await;
    let (user, facility) = user_at_site(&app, "focal", None).await;
    let started = Utc::now() - Duration::hours(2);
    let mut body = at_site();
    body["occurred_at"] = json!(
        started
            .with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).unwrap())
            .to_rfc3339()
    );
    body["notes"] = json!("morning shift");
    let (status, record) = clock_in(&app, &user, body).await;
    assert_eq!(status, StatusCode::CREATED, "{record}");
    assert_eq!(record["status"], "open");
    assert_eq!(record["facility_id"], json!(facility));
    assert_eq!(record["source"], "online");
    assert_eq!(record["outside_geofence"], false);
    assert!(
        record["clock_in_at"].as_str().unwrap().ends_with('Z'),
        "UTC out: {record}"
    );
    assert!(record["duration_s"].is_null());

    let (_, active) = send(app.get("/api/attendance/active").bearer_auth(&user.token)).await;
    assert_eq!(active["attendance"]["id"], record["id"]);

    let (status, closed) = clock_out(&app, &user, at_site()).await;
    assert_eq!(status, StatusCode::OK, "{closed}");
    assert_eq!(closed["status"], "closed");
    let duration = closed["duration_s"].as_i64().unwrap();
    assert!((7195..=7215).contains(&duration), "{duration}");
    assert_eq!(closed["clock_out_location"]["accuracy_m"], 8.0);
    assert_eq!(closed["notes"], "morning shift");
    assert!(closed["sync_version"].as_i64().unwrap() >= 2);

    let (_, active) = send(app.get("/api/attendance/active").bearer_auth(&user.token)).await;
    assert!(active["attendance"].is_null());
    let actions = app.actions().await;
    assert!(
        actions.contains(&"attendance.clock_in".into())
            && actions.contains(&"attendance.clock_out".into())
    );
}

#[tokio::test]
async fn double_clock_in_and_clock_out_without_a_shift_are_conflicts() {
    let app = TestApp::spawn().await;
    let (user, _) = user_at_site(&app, "focal", None).await;
    let (status, body) = clock_out(&app, &user, at_site()).await;
    assert_error(status, &body, StatusCode::CONFLICT, "not_clocked_in");
    assert_eq!(
        clock_in(&app, &user, at_site()).await.0,
        StatusCode::CREATED
    );
    let (status, body) = clock_in(&app, &user, at_site()).await;
    assert_error(status, &body, StatusCode::CONFLICT, "already_clocked_in");
}

#[tokio::test]
async fn a_clock_out_sent_again_gets_the_shift_it_closed_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let (user, _) = user_at_site(&app, "focal", None).await;
    assert_eq!(
        clock_in(&app, &user, at_site()).await.0,
        StatusCode::CREATED
    );
    let mut request = at_site();
    request["notes"] = json!("generator down");
    let (status, first) = clock_out(&app, &user, request.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");

    // The phone lost the answer and sends the same clock-out again.
    let again_request = request.clone();
    let (status, again) = clock_out(&app, &user, request.clone()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again, first);
    let (version, audits): (i32, i64) = sqlx::query_as(
        "SELECT a.sync_version,
                (SELECT count(*) FROM activities WHERE action = 'attendance.clock_out')
         FROM attendance a WHERE a.user_id = $1",
    )
    .bind(user.id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((version, audits), (2, 1));
    // Another spot, or other notes, is another clock-out: there is no shift left to close.
    let mut elsewhere = request.clone();
    elsewhere["latitude"] = json!(SITE.0 + 10.0 * DEG_PER_M);
    let mut other_notes = request;
    other_notes["notes"] = json!("back tomorrow");
    for body in [elsewhere, other_notes] {
        let (status, answer) = clock_out(&app, &user, body).await;
        assert_error(status, &answer, StatusCode::CONFLICT, "not_clocked_in");
    }
    // Ten minutes on, counted from the clock-out itself, even when the shift was edited since.
    sqlx::query(
        "UPDATE activities SET created_at = created_at - interval '11 minutes'
         WHERE action = 'attendance.clock_out'",
    )
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query("UPDATE attendance SET updated_at = now() WHERE user_id = $1")
        .bind(user.id)
        .execute(&app.db)
        .await
        .unwrap();
    let (status, answer) = clock_out(&app, &user, again_request).await;
    assert_error(status, &answer, StatusCode::CONFLICT, "not_clocked_in");
}

#[tokio::test]
async fn a_clock_out_sent_again_after_the_next_clock_in_leaves_the_new_shift_open() {
    let app = TestApp::spawn().await;
    let (user, _) = user_at_site(&app, "focal", None).await;
    let ago = |minutes| at_site_stamped(-Duration::minutes(minutes));
    assert_eq!(clock_in(&app, &user, ago(60)).await.0, StatusCode::CREATED);
    let request = ago(30);
    let (status, first) = clock_out(&app, &user, request.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    // Another shift, from the same spot, before the phone sends the first clock-out again
    // (its answer was lost), and a third begun since.
    assert_eq!(clock_in(&app, &user, ago(20)).await.0, StatusCode::CREATED);
    let (status, second) = clock_out(&app, &user, ago(10)).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let (status, next) = clock_in(&app, &user, at_site()).await;
    assert_eq!(status, StatusCode::CREATED, "{next}");
    clock_out_sent_again(&app, &user, request, &first, &next).await;
    // A clock-out from a phone whose clock runs behind, stamped before the open shift began, is
    // no repeat: it closes the open shift.
    let (status, closed) = clock_out(&app, &user, ago(2)).await;
    assert_eq!(status, StatusCode::OK, "{closed}");
    assert_eq!(closed["id"], next["id"]);
    assert_eq!(closed["status"], "closed");
}

#[tokio::test]
async fn the_periodic_sweep_passes_over_a_held_shift_until_it_is_free() {
    let app = TestApp::spawn_with(|env| {
        env.insert("SWEEP_INTERVAL_SECS".into(), "1".into());
    })
    .await;
    let (user, facility) = user_at_site(&app, "focal", None).await;
    let (other, _) = user_at_site(&app, "focal", None).await;
    let held = app.forgotten_shift(user.id, facility).await;
    let free = app.forgotten_shift(other.id, facility).await;
    // A session left open in `psql`, holding one row: the sweep closes every other forgotten
    // shift meanwhile, and that one at a later turn, once the row is free.
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM attendance WHERE id = $1 FOR UPDATE")
        .bind(held)
        .execute(&mut *holder)
        .await
        .unwrap();
    let status = |id: uuid::Uuid| {
        let db = app.db.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM attendance WHERE id = $1")
                .bind(id)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    let started = std::time::Instant::now();
    while status(free).await != "incomplete" {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "a held row kept the sweep from every other shift"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status(held).await, "open");
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(waiting, 0, "the sweep waits on the held row");
    holder.rollback().await.unwrap();
    let freed = std::time::Instant::now();
    while status(held).await != "incomplete" {
        assert!(
            freed.elapsed() < std::time::Duration::from_secs(10),
            "never swept"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_shift_left_open_past_the_limit_is_closed_incomplete_by_the_next_clock_in() {
    let app = TestApp::spawn().await;
    let (user, facility) = user_at_site(&app, "focal", None).await;
    let forgotten = app.forgotten_shift(user.id, facility).await;
    let (status, body) = clock_in(&app, &user, at_site()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, clock_out_at): (String, Option<chrono::DateTime<Utc>>) =
        sqlx::query_as("SELECT status, clock_out_at FROM attendance WHERE id = $1")
            .bind(forgotten)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((status.as_str(), clock_out_at), ("incomplete", None));
    let closed: Value = sqlx::query_scalar(
        "SELECT details->'closed_forgotten' FROM activities WHERE action = 'attendance.clock_in'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(closed, json!(1));
}

#[tokio::test]
async fn a_clock_in_meeting_the_sweep_over_a_forgotten_shift_is_stored() {
    let app = TestApp::spawn().await;
    let (user, facility) = user_at_site(&app, "focal", None).await;
    let forgotten = app.forgotten_shift(user.id, facility).await;
    // The sweep holds the forgotten shift as it closes it.
    let mut sweep = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM attendance WHERE id = $1 FOR UPDATE")
        .bind(forgotten)
        .execute(&mut *sweep)
        .await
        .unwrap();
    // A clock-in with no key (no client_id, no device): it finds the shift open, and waits to
    // close it.
    let clocking_in = tokio::spawn(clock_in_task(&app, &user, at_site()));
    app.until_waiting_on_locks(1, "the clock-in waits to close the forgotten shift")
        .await;
    sqlx::query("UPDATE attendance SET status = 'incomplete' WHERE id = $1")
        .bind(forgotten)
        .execute(&mut *sweep)
        .await
        .unwrap();
    sweep.commit().await.unwrap();
    // The sweep closed it first: today's clock-in is not blocked by it.
    let (status, body) = clocking_in.await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, active) = send(app.get("/api/attendance/active").bearer_auth(&user.token)).await;
    assert_eq!(active["attendance"]["id"], body["id"]);
}

#[tokio::test]
async fn a_night_shift_under_the_limit_stays_open() {
    let app = TestApp::spawn().await;
    let (user, facility) = user_at_site(&app, "focal", None).await;
    let night = app
        .insert_attendance(
            user.id,
            facility,
            Utc::now() - Duration::hours(10),
            None,
            "open",
        )
        .await;
    let (status, body) = clock_in(&app, &user, at_site()).await;
    assert_error(status, &body, StatusCode::CONFLICT, "already_clocked_in");
    let (status, closed) = clock_out(&app, &user, at_site()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(closed["id"], json!(night));
    assert!(closed["duration_s"].as_i64().unwrap() >= 10 * 3600);
}

#[tokio::test]
async fn a_clock_out_sent_late_still_closes_a_shift_of_normal_length() {
    let app = TestApp::spawn().await;
    let (user, facility) = user_at_site(&app, "focal", None).await;
    let shift = app.forgotten_shift(user.id, facility).await;
    // The phone clocked out 15 hours into the shift and reached the service two hours later.
    let mut late = at_site();
    late["occurred_at"] = json!((Utc::now() - Duration::hours(2)).to_rfc3339());
    let (status, closed) = clock_out(&app, &user, late).await;
    assert_eq!(status, StatusCode::OK, "{closed}");
    assert_eq!(closed["id"], json!(shift));
    assert_eq!(closed["status"], "closed");
    assert_eq!(closed["duration_s"].as_i64().unwrap() / 60, 15 * 60);
    // A clock-out that itself comes past the limit finds the shift forgotten.
    app.forgotten_shift(user.id, facility).await;
    let (status, body) = clock_out(&app, &user, at_site()).await;
    assert_error(status, &body, StatusCode::CONFLICT, "not_clocked_in");
    // Sent again (the phone retried), it is told what became of the shift.
    let (status, body) = clock_out(&app, &user, at_site()).await;
    assert_error(status, &body, StatusCode::CONFLICT, "not_clocked_in");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("closed as incomplete"), "{body}");
}

#[tokio::test]
async fn a_clock_out_held_back_past_the_sweep_still_closes_its_shift() {
    let app = TestApp::spawn().await;
    let (user, facility) = user_at_site(&app, "focal", None).await;
    let started = Utc::now() - Duration::hours(17);
    let shift = app
        .insert_attendance(user.id, facility, started, None, "open")
        .await;
    // The sweep closes the shift as forgotten before the phone's clock-out reaches the service.
    let swept = field_attendance::db::attendance::close_forgotten(
        &app.db,
        None,
        Utc::now() - Duration::hours(16),
    )
    .await
    .unwrap();
    assert_eq!(swept, 1);
    // A clock-out of now would make the shift longer than the maximum: it stays incomplete.
    let (status, body) = clock_out(&app, &user, at_site()).await;
    assert_error(status, &body, StatusCode::CONFLICT, "not_clocked_in");
    // The phone's, nine hours into the shift, ends it as the sync push would.
    let mut late = at_site();
    late["occurred_at"] = json!((started + Duration::hours(9)).to_rfc3339());
    let (status, closed) = clock_out(&app, &user, late.clone()).await;
    assert_eq!(status, StatusCode::OK, "{closed}");
    assert_eq!(closed["id"], json!(shift));
    assert_eq!(closed["status"], "closed");
    assert_eq!(closed["duration_s"].as_i64().unwrap() / 60, 9 * 60);
    // Sent again, it is answered with that shift, changed no further.
    let (status, again) = clock_out(&app, &user, late.clone()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again, closed);
    // Another clock-out from the same spot, at another time, is no repeat of it.
    late["occurred_at"] = json!((started + Duration::hours(9) + Duration::minutes(8)).to_rfc3339());
    let (status, body) = clock_out(&app, &user, late).await;
    assert_error(status, &body, StatusCode::CONFLICT, "not_clocked_in");
}

/// A clock-out at `started + 9 h` of a shift begun at `started`, which reads the shift open;
/// before its close, another change closes the shift as incomplete and opens one at
/// `next_started`. The answer, the first shift's id and the next one's.
async fn clock_out_overtaken(
    app: &TestApp,
    started: chrono::DateTime<Utc>,
    next_started: chrono::DateTime<Utc>,
) -> ((StatusCode, Value), uuid::Uuid, uuid::Uuid) {
    let (user, facility) = user_at_site(app, "focal", None).await;
    let shift = app
        .insert_attendance(user.id, facility, started, None, "open")
        .await;
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM attendance WHERE id = $1 FOR UPDATE")
        .bind(shift)
        .execute(&mut *holder)
        .await
        .unwrap();
    let mut late = at_site();
    late["occurred_at"] = json!((started + Duration::hours(9)).to_rfc3339());
    let request = app
        .post("/api/attendance/clock-out")
        .bearer_auth(&user.token)
        .json(&late);
    let closing = tokio::spawn(async move { send(request).await });
    app.until_waiting_on_rows(1, "the clock-out waits to close the shift")
        .await;
    sqlx::query("UPDATE attendance SET status = 'incomplete' WHERE id = $1")
        .bind(shift)
        .execute(&mut *holder)
        .await
        .unwrap();
    let next: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO attendance (user_id, facility_id, status, clock_in_at, clock_in_latitude,
                                 clock_in_longitude, distance_m)
         VALUES ($1, $2, 'open', $3, -1.9456, 30.1270, 0) RETURNING id",
    )
    .bind(user.id)
    .bind(facility)
    .bind(next_started)
    .fetch_one(&mut *holder)
    .await
    .unwrap();
    holder.commit().await.unwrap();
    (closing.await.unwrap(), shift, next)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_out_that_a_clock_in_overtakes_still_closes_the_shift_it_came_for() {
    let app = TestApp::spawn().await;
    // The next clock-in closes the shift as forgotten (past the maximum by now, not by the
    // clock-out's time): the clock-out still ends it, nine hours long.
    let started = Utc::now() - Duration::hours(17);
    let ((status, closed), shift, next) = clock_out_overtaken(&app, started, Utc::now()).await;
    assert_eq!(status, StatusCode::OK, "{closed}");
    assert_eq!(closed["id"], json!(shift));
    assert_eq!(closed["status"], "closed");
    assert_eq!(closed["duration_s"].as_i64().unwrap() / 60, 9 * 60);
    let status: String = sqlx::query_scalar("SELECT status FROM attendance WHERE id = $1")
        .bind(next)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(status, "open");
    // A shift begun before the clock-out's time (another device's, synced meanwhile) is the one
    // it ends.
    let started = Utc::now() - Duration::hours(10);
    let next_started = started + Duration::hours(8);
    let ((status, closed), _, next) = clock_out_overtaken(&app, started, next_started).await;
    assert_eq!(status, StatusCode::OK, "{closed}");
    assert_eq!(closed["id"], json!(next));
    assert_eq!(closed["duration_s"].as_i64().unwrap() / 60, 60);
}

#[tokio::test]
async fn a_clock_out_whose_notes_would_make_the_records_too_long_to_sync_is_refused() {
    let app = TestApp::spawn().await;
    let (user, facility) = user_at_site(&app, "focal", None).await;
    let started = Utc::now() - Duration::hours(2);
    let shift = app
        .insert_attendance(user.id, facility, started, None, "open")
        .await;
    // Notes a device synced with the shift: up to 2,001 characters are allowed there.
    sqlx::query("UPDATE attendance SET notes = repeat('n', 1500) WHERE id = $1")
        .bind(shift)
        .execute(&app.db)
        .await
        .unwrap();
    let with_notes = |n: usize| {
        let mut body = at_site();
        body["notes"] = json!("x".repeat(n));
        body
    };
    let (status, body) = clock_out(&app, &user, with_notes(600)).await;
    assert_invalid(status, &body, "notes");
    let (status, closed) = clock_out(&app, &user, with_notes(500)).await;
    assert_eq!(status, StatusCode::OK, "still open: {closed}");
    assert_eq!(closed["notes"].as_str().unwrap().chars().count(), 2001);
}

#[tokio::test]
async fn backdated_clock_ins_that_would_count_hours_twice_or_never_close_are_refused() {
    let app = TestApp::spawn().await;
    let (user, _) = user_at_site(&app, "focal", None).await;
    let at = |hours_ago: i64, minutes_ago: i64| {
        let mut body = at_site();
        body["occurred_at"] = json!(
            (Utc::now() - Duration::hours(hours_ago) - Duration::minutes(minutes_ago)).to_rfc3339()
        );
        body
    };
    assert_eq!(clock_in(&app, &user, at(5, 0)).await.0, StatusCode::CREATED);
    let (status, closed) = clock_out(&app, &user, at(1, 0)).await;
    assert_eq!(status, StatusCode::OK, "{closed}");

    let (status, body) = clock_in(&app, &user, at(3, 0)).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    // Before the shift: open from then until now, it would hold the whole shift.
    let (status, body) = clock_in(&app, &user, at(6, 0)).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, body) = clock_in(&app, &user, at(17, 0)).await;
    assert_invalid(status, &body, "occurred_at");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM attendance WHERE user_id = $1")
        .bind(user.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 1, "nothing was written by the refused clock-ins");
    // After the shift it ended, a backdated clock-in is fine.
    let (status, body) = clock_in(&app, &user, at(0, 30)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // A phone whose clock runs three minutes slow clocks in at the next facility just after a
    // clock-out the server stamped: within the tolerance, not an overlap.
    let (other, _) = user_at_site(&app, "focal", None).await;
    assert_eq!(
        clock_in(&app, &other, at(2, 0)).await.0,
        StatusCode::CREATED
    );
    assert_eq!(clock_out(&app, &other, at_site()).await.0, StatusCode::OK);
    let (status, body) = clock_in(&app, &other, at(0, 3)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn a_clock_out_keeps_the_clock_in_notes_and_forgives_a_phone_clock_running_behind() {
    let app = TestApp::spawn().await;
    let (user, _) = user_at_site(&app, "focal", None).await;
    let with = |notes: Option<&str>, minutes_ago: i64| {
        let mut body = at_site();
        if let Some(notes) = notes {
            body["notes"] = json!(notes);
        }
        body["occurred_at"] = json!((Utc::now() - Duration::minutes(minutes_ago)).to_rfc3339());
        body
    };
    let (status, body) = clock_in(&app, &user, with(Some("arrived late, road flooded"), 0)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // The phone's clock runs three minutes behind the server that stamped the clock-in.
    let (status, closed) = clock_out(&app, &user, with(Some("left for a clinic visit"), 3)).await;

    assert_eq!(status, StatusCode::OK, "{closed}");
    assert_eq!(closed["status"], "closed");
    assert_eq!(closed["duration_s"], 0, "{closed}");
    assert_eq!(
        closed["notes"], "arrived late, road flooded\nleft for a clinic visit",
        "{closed}"
    );
    let stored: Option<String> = sqlx::query_scalar("SELECT notes FROM attendance WHERE id = $1")
        .bind(
            closed["id"]
                .as_str()
                .unwrap()
                .parse::<uuid::Uuid>()
                .unwrap(),
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, closed["notes"].as_str().map(str::to_string));

    // Further behind than the tolerance (five minutes): refused, and the shift stays open.
    assert_eq!(
        clock_in(&app, &user, with(None, 0)).await.0,
        StatusCode::CREATED
    );
    let (status, body) = clock_out(&app, &user, with(None, 10)).await;
    assert_invalid(status, &body, "occurred_at");
    let (status, active) = send(app.get("/api/attendance/active").bearer_auth(&user.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(active["attendance"]["status"], "open", "{active}");

    // A clock-out with notes on a shift with none keeps them; one echoing the clock-in's note
    // keeps it once.
    let (status, closed) = clock_out(&app, &user, with(Some("generator down"), 0)).await;
    assert_eq!(status, StatusCode::OK, "{closed}");
    assert_eq!(closed["notes"], "generator down");
    assert_eq!(
        clock_in(&app, &user, with(Some("covering for Jean"), 0))
            .await
            .0,
        StatusCode::CREATED
    );
    let (status, closed) = clock_out(&app, &user, with(Some("covering for Jean"), 0)).await;
    assert_eq!(status, StatusCode::OK, "{closed}");
    assert_eq!(closed["notes"], "covering for Jean");
}

#[tokio::test]
async fn a_clock_out_a_little_ahead_of_the_server_clock_closes_a_full_length_shift() {
    let app = TestApp::spawn().await;
    let (user, facility) = user_at_site(&app, "focal", None).await;
    // 15 h 58 min into a 16 h maximum; the phone's clock runs four minutes fast.
    let shift = app
        .insert_attendance(
            user.id,
            facility,
            Utc::now() - Duration::hours(16) + Duration::minutes(2),
            None,
            "open",
        )
        .await;
    let mut body = at_site();
    body["occurred_at"] = json!((Utc::now() + Duration::minutes(4)).to_rfc3339());
    let (status, closed) = clock_out(&app, &user, body).await;
    assert_eq!(status, StatusCode::OK, "{closed}");
    assert_eq!(closed["id"], json!(shift));
    assert_eq!(closed["status"], "closed");
    // Stored as ending now, not in the future: no longer than the maximum.
    let ended: chrono::DateTime<Utc> = closed["clock_out_at"].as_str().unwrap().parse().unwrap();
    assert!(ended <= Utc::now(), "{closed}");
    assert!(
        closed["duration_s"].as_i64().unwrap() <= 16 * 3600,
        "{closed}"
    );
}

/// Waits, ten seconds at most, for the periodic sweep to close the shift `id` as incomplete.
async fn swept(app: &TestApp, id: uuid::Uuid) {
    app.until_counted(
        &format!("SELECT count(*) FROM attendance WHERE id = '{id}' AND status = 'incomplete'"),
        1,
        "the sweep closes the forgotten shift",
    )
    .await;
}

#[tokio::test]
async fn a_job_held_up_in_the_database_holds_up_no_other() {
    // Arrange: the hourly thinning of sync timestamps, which runs at start, waits on a lock.
    let test_db = crate::helpers::TestDb::new().await;
    let pool = test_db.pool().await;
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE sync_snapshots IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let mut env = crate::helpers::test_env(&test_db.url());
    env.insert("SWEEP_INTERVAL_SECS".into(), "1".into());
    let app = TestApp::spawn_on(test_db, env).await;
    app.until_waiting_on_locks(1, "the thinning waits on the lock")
        .await;

    // Act: a shift is forgotten meanwhile.
    let (user, facility) = user_at_site(&app, "focal", None).await;
    let forgotten = app
        .insert_attendance(
            user.id,
            facility,
            Utc::now() - Duration::hours(20),
            None,
            "open",
        )
        .await;

    // Assert: the sweep still runs every second.
    swept(&app, forgotten).await;
    lock.rollback().await.unwrap();
}

#[tokio::test]
async fn the_periodic_sweep_closes_forgotten_shifts() {
    let app = TestApp::spawn_with(|env| {
        env.insert("SWEEP_INTERVAL_SECS".into(), "1".into());
    })
    .await;
    let (user, facility) = user_at_site(&app, "focal", None).await;
    let forgotten = app
        .insert_attendance(
            user.id,
            facility,
            Utc::now() - Duration::hours(20),
            None,
            "open",
        )
        .await;
    // Another worker, at work for two hours: the sweep leaves that shift open.
    let (colleague, _) = user_at_site(&app, "focal", None).await;
    let at_work = app
        .insert_attendance(
            colleague.id,
            facility,
            Utc::now() - Duration::hours(2),
            None,
            "open",
        )
        .await;
    // Closed by the same sweep, had that taken every open shift for forgotten.
    swept(&app, forgotten).await;
    let untouched: String = sqlx::query_scalar("SELECT status FROM attendance WHERE id = $1")
        .bind(at_work)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(untouched, "open");
    // How the shift ended is in its audit trail, done by no one.
    let audited: Vec<(Option<uuid::Uuid>, uuid::Uuid, Option<String>)> = sqlx::query_as(
        "SELECT actor_id, entity_id, details->>'user_id' FROM activities
         WHERE action = 'attendance.auto_close'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(audited, vec![(None, forgotten, Some(user.id.to_string()))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_simultaneous_clock_ins_of_one_user_create_exactly_one_record() {
    let app = TestApp::spawn_with(|env| {
        env.insert("DB_MAX_CONNECTIONS".into(), "20".into());
    })
    .await;
    let (user, _) = user_at_site(&app, "focal", None).await;
    let attempts = (0..50).map(|_| clock_in(&app, &user, at_site()));
    let results = futures::future::join_all(attempts).await;
    let created = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let conflicts = results
        .iter()
        .filter(|(s, b)| *s == StatusCode::CONFLICT && b["error"]["code"] == "already_clocked_in")
        .count();
    assert_eq!(
        (created, conflicts),
        (1, 49),
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM attendance WHERE user_id = $1")
        .bind(user.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_clocking_in_at_once_gets_one_record_and_one_audit_row_each() {
    let app = TestApp::spawn().await;
    let facility = app.facility().await;
    let mut crowd = Vec::new();
    for _ in 0..60 {
        crowd.push(app.quick_user("focal", None, facility).await);
    }

    let results =
        futures::future::join_all(crowd.iter().map(|u| clock_in(&app, u, at_site()))).await;

    let mut ids = std::collections::HashSet::new();
    for (user, (status, body)) in crowd.iter().zip(&results) {
        assert_eq!(*status, StatusCode::CREATED, "{body}");
        assert_eq!(body["user_id"], json!(user.id), "{body}");
        assert_eq!(body["status"], "open");
        assert!(ids.insert(body["id"].as_str().unwrap().to_string()));
        // The answer is the record as stored.
        let (status, stored) = send(
            app.get(&format!("/api/attendance/{}", body["id"].as_str().unwrap()))
                .bearer_auth(&user.token),
        )
        .await;
        assert_eq!((status, &stored), (StatusCode::OK, body));
    }
    let audited: Vec<(uuid::Uuid, uuid::Uuid, String)> = sqlx::query_as(
        "SELECT a.user_id, act.actor_id, act.actor_email FROM activities act
         JOIN attendance a ON a.id = act.entity_id WHERE act.action = 'attendance.clock_in'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    // Operators see how many requests each shared statement served.
    let metrics = app.metrics(&app.admin().await).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("coalesced_batch_size_count")
                && l.contains(r#"batch="clock_in""#)),
        "{metrics}"
    );
    assert_eq!(audited.len(), 60);
    for (owner, actor, email) in &audited {
        assert_eq!(owner, actor);
        let user = crowd.iter().find(|u| u.id == *owner).unwrap();
        assert_eq!(*email, user.email);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_reading_and_closing_shifts_at_once_each_touch_only_their_own() {
    let app = TestApp::spawn().await;
    let facility = app.facility().await;
    let mut crowd = Vec::new();
    for _ in 0..60 {
        crowd.push(app.quick_user("focal", None, facility).await);
    }
    // The first half is clocked in; the second is not.
    let (working, idle) = crowd.split_at(30);
    let mut shifts = Vec::new();
    for user in working {
        let (status, body) = clock_in(&app, user, at_site()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        shifts.push(body);
    }

    let active = futures::future::join_all(
        crowd
            .iter()
            .map(|u| send(app.get("/api/attendance/active").bearer_auth(&u.token))),
    )
    .await;
    let mut out = at_site();
    out["notes"] = json!("end of day");
    let closed =
        futures::future::join_all(crowd.iter().map(|u| clock_out(&app, u, out.clone()))).await;

    for (i, ((status, seen), (out_status, out_body))) in active.iter().zip(&closed).enumerate() {
        assert_eq!(*status, StatusCode::OK);
        if i < 30 {
            assert_eq!(seen["attendance"], shifts[i], "user {i}");
            assert_eq!(*out_status, StatusCode::OK, "{out_body}");
            assert_eq!(out_body["id"], shifts[i]["id"]);
            assert_eq!(out_body["user_id"], json!(working[i].id));
            assert_eq!(
                (
                    &out_body["status"],
                    &out_body["notes"],
                    out_body["sync_version"].as_i64()
                ),
                (&json!("closed"), &json!("end of day"), Some(2))
            );
            let (_, stored) = send(
                app.get(&format!(
                    "/api/attendance/{}",
                    out_body["id"].as_str().unwrap()
                ))
                .bearer_auth(&working[i].token),
            )
            .await;
            assert_eq!(&stored, out_body);
        } else {
            assert_eq!(seen["attendance"], Value::Null, "user {i}");
            assert_error(
                *out_status,
                out_body,
                StatusCode::CONFLICT,
                "not_clocked_in",
            );
        }
    }
    let audited: Vec<(uuid::Uuid, uuid::Uuid)> = sqlx::query_as(
        "SELECT a.user_id, act.actor_id FROM activities act
         JOIN attendance a ON a.id = act.entity_id WHERE act.action = 'attendance.clock_out'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(audited.len(), 30);
    assert!(audited.iter().all(|(owner, actor)| owner == actor));
    assert!(
        idle.iter()
            .all(|u| audited.iter().all(|(owner, _)| *owner != u.id))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_retries_of_one_clock_in_return_one_record() {
    let app = TestApp::spawn().await;
    let (user, _) = user_at_site(&app, "focal", None).await;
    let mut body = at_site();
    body["client_id"] = json!("phone-7:2026-12-02T08:00");

    let results =
        futures::future::join_all((0..10).map(|_| clock_in(&app, &user, body.clone()))).await;

    let statuses: Vec<StatusCode> = results.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert!(results.iter().all(|(_, b)| b["id"] == results[0].1["id"]));
    let rows = app.attendance_rows().await;
    assert_eq!(rows, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_in_the_database_refuses_does_not_fail_those_written_with_it() {
    let app = TestApp::spawn().await;
    gate_clock_ins(&app).await;
    let facility = app.facility().await;
    let mut crowd = Vec::new();
    for _ in 0..21 {
        crowd.push(app.quick_user("focal", None, facility).await);
    }
    let (gate, held) = hold_every_slot(&app, facility).await;

    // Every slot is taken, so the crowd queues and goes together once one is free.
    let requests: Vec<_> = crowd
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let mut body = at_site();
            if i == 10 {
                body["notes"] = json!("refuse");
            }
            tokio::spawn(clock_in_task(&app, u, body))
        })
        .collect();
    wait_until_queued(&app, crowd.len()).await;
    release(gate).await;

    for (i, request) in requests.into_iter().enumerate() {
        let (status, body) = request.await.unwrap();
        if i == 10 {
            // In the contract's shape, with nothing of the database's own words.
            assert_error(status, &body, StatusCode::INTERNAL_SERVER_ERROR, "internal");
            assert!(!body.to_string().contains("refused by the test"), "{body}");
        } else {
            assert_eq!(status, StatusCode::CREATED, "clock-in {i}: {body}");
        }
    }
    for h in held {
        assert_eq!(h.await.unwrap().0, StatusCode::CREATED);
    }
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM attendance WHERE status = 'open'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(open as usize, SLOTS + 20);
    // The held ones, then the crowd in one statement, then each of the crowd again alone.
    assert_eq!(clock_in_attempts(&app).await, (SLOTS + 2 * 21) as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_in_whose_client_gave_up_while_it_waited_is_not_written() {
    let app = TestApp::spawn().await;
    gate_clock_ins(&app).await;
    let facility = app.facility().await;
    let quitter = app.quick_user("focal", None, facility).await;
    let (gate, held) = hold_every_slot(&app, facility).await;

    // Every slot is busy: this clock-in waits, and its client leaves before a slot is free.
    let quitting = tokio::spawn(clock_in_task(&app, &quitter, at_site()));
    wait_until_queued(&app, 1).await;
    quitting.abort();
    assert!(quitting.await.unwrap_err().is_cancelled());
    // The service sees the connection close and drops the request (nothing shows when it has:
    // a second is ample on a busy machine).
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    release(gate).await;
    for h in held {
        assert_eq!(h.await.unwrap().0, StatusCode::CREATED);
    }

    // Its retry is a first clock-in, and the only row of the quitter the database ever saw.
    let (status, body) = clock_in(&app, &quitter, at_site()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM attendance WHERE user_id = $1")
        .bind(quitter.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(
        (stored, clock_in_attempts(&app).await),
        (1, SLOTS as i64 + 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_stuck_past_the_request_timeout_give_their_slots_back() {
    let app = TestApp::spawn_timing_out_after_a_second().await;
    gate_clock_ins(&app).await;
    let facility = app.facility().await;
    let later = app.quick_user("focal", None, facility).await;
    let (gate, held) = hold_every_slot(&app, facility).await;

    // The held clock-ins are stuck in the database, and their requests time out.
    for h in held {
        let (status, body) = h.await.unwrap();
        assert_error(
            status,
            &body,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
        );
    }
    // Postgres cancels their statements before the requests' time runs out, and the slots are
    // free for the next clock-in.
    let (status, body) = clock_in(&app, &later, at_site()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    release(gate).await;
    // Nothing of what they were answered 503 for is written afterwards.
    until_no_insert_runs(&app).await;
    assert_eq!(app.attendance_rows().await, 1);
}

/// Waits until no statement of this test's database is inserting attendance.
async fn until_no_insert_runs(app: &TestApp) {
    app.until_counted(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE '%INSERT INTO attendance%'
           AND state <> 'idle' AND pid <> pg_backend_pid()",
        0,
        "the statements inserting attendance end",
    )
    .await;
}

/// The writing slots of each kind of shared statement.
const SLOTS: usize = field_attendance::db::coalesce::SLOTS;
/// The advisory lock that held clock-ins wait for.
const GATE: i64 = 4242;

/// Makes the database count every row it is asked to write, keep a row noted "hold" inside its
/// statement while the test holds `GATE`, and refuse, once all its rows are written, a
/// statement with a row noted "refuse".
async fn gate_clock_ins(app: &TestApp) {
    sqlx::raw_sql(
        "CREATE SEQUENCE test_clock_in_attempts;
         CREATE SEQUENCE test_clock_in_held;
         CREATE FUNCTION test_clock_in_gate() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM nextval('test_clock_in_attempts');
             -- Slow work, not a lock wait (which a shared statement gives up on).
             IF NEW.notes = 'hold' THEN
                 PERFORM nextval('test_clock_in_held');
                 WHILE NOT pg_try_advisory_xact_lock_shared(4242) LOOP
                     PERFORM pg_sleep(0.005);
                 END LOOP;
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER test_clock_in_gate BEFORE INSERT ON attendance
             FOR EACH ROW EXECUTE FUNCTION test_clock_in_gate();
         CREATE FUNCTION test_clock_in_refusal() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF EXISTS (SELECT 1 FROM written WHERE notes = 'refuse') THEN
                 RAISE EXCEPTION 'refused by the test';
             END IF;
             RETURN NULL;
         END $$;
         CREATE TRIGGER test_clock_in_refusal AFTER INSERT ON attendance
             REFERENCING NEW TABLE AS written
             FOR EACH STATEMENT EXECUTE FUNCTION test_clock_in_refusal();",
    )
    .execute(&app.db)
    .await
    .unwrap();
}

async fn clock_in_attempts(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM test_clock_in_attempts",
    )
    .fetch_one(&app.db)
    .await
    .unwrap()
}

/// Takes every clock-in slot with a held clock-in, one statement each: the next is sent only
/// once the one before waits inside its statement. Returns the gate (release it to let them
/// finish) and their requests.
async fn hold_every_slot(
    app: &TestApp,
    facility: uuid::Uuid,
) -> (
    sqlx::pool::PoolConnection<sqlx::Postgres>,
    Vec<tokio::task::JoinHandle<(StatusCode, Value)>>,
) {
    let gate = close_gate(app).await;
    let mut held = Vec::new();
    for k in 1..=SLOTS as i64 {
        let user = app.quick_user("focal", None, facility).await;
        let mut body = at_site();
        body["notes"] = json!("hold");
        held.push(tokio::spawn(clock_in_task(app, &user, body)));
        wait_until_held(app, k).await;
    }
    (gate, held)
}

/// Takes `GATE`, for held clock-ins to wait on.
async fn close_gate(app: &TestApp) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
    let mut gate = app.db.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(GATE)
        .execute(&mut *gate)
        .await
        .unwrap();
    gate
}

/// Waits until `k` statements have come to `GATE` inside the database.
async fn wait_until_held(app: &TestApp, k: i64) {
    let waiting = async {
        loop {
            let n: i64 = sqlx::query_scalar(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM test_clock_in_held",
            )
            .fetch_one(&app.db)
            .await
            .unwrap();
            if n >= k {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("the held clock-in reaches the database");
}

/// Waits until `n` clock-ins wait for a writing slot.
async fn wait_until_queued(app: &TestApp, n: usize) {
    let queued = async {
        while app.batches.clock_ins.waiting() < n {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), queued)
        .await
        .expect("the clock-ins queue");
}

async fn release(mut gate: sqlx::pool::PoolConnection<sqlx::Postgres>) {
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(GATE)
        .execute(&mut *gate)
        .await
        .unwrap();
}

/// A clock-in that can run on its own task.
fn clock_in_task(
    app: &TestApp,
    user: &TestUser,
    body: Value,
) -> impl std::future::Future<Output = (StatusCode, Value)> + Send + 'static {
    let request = app
        .post("/api/attendance/clock-in")
        .bearer_auth(&user.token)
        .json(&body);
    async move { send(request).await }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_simultaneous_clock_outs_close_the_shift_exactly_once() {
    let app = TestApp::spawn_with(|env| {
        env.insert("DB_MAX_CONNECTIONS".into(), "20".into());
    })
    .await;
    let (user, _) = user_at_site(&app, "focal", None).await;
    let (status, _) = clock_in(&app, &user, at_site()).await;
    assert_eq!(status, StatusCode::CREATED);
    let attempts = (0..20).map(|i| {
        let mut body = at_site();
        body["notes"] = json!(format!("attempt {i}"));
        clock_out(&app, &user, body)
    });
    let results = futures::future::join_all(attempts).await;
    let closed = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let refused = results
        .iter()
        .filter(|(s, b)| *s == StatusCode::CONFLICT && b["error"]["code"] == "not_clocked_in")
        .count();
    assert_eq!(
        (closed, refused),
        (1, 19),
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    let (version, notes, audits): (i32, String, i64) = sqlx::query_as(
        "SELECT a.sync_version, a.notes,
                (SELECT count(*) FROM activities WHERE action = 'attendance.clock_out')
         FROM attendance a WHERE a.user_id = $1",
    )
    .bind(user.id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((version, audits), (2, 1));
    // The clock-out that was answered 200 is the one stored.
    let winner = results.iter().find(|(s, _)| *s == StatusCode::OK).unwrap();
    assert_eq!(winner.1["notes"], json!(notes));
}

#[tokio::test]
async fn a_batch_that_meets_a_row_held_elsewhere_gives_up_and_its_requests_go_alone() {
    use field_attendance::db::clock_ins::{ClockIns, NewClockIn};
    use field_attendance::db::coalesce::{Coalescer, Shared};
    let app = TestApp::spawn().await;
    let (held, facility) = user_at_site(&app, "focal", None).await;
    let (free, _) = user_at_site(&app, "focal", None).await;
    // Another transaction (a session left open in `psql`, say) has written the first user's
    // open shift and not committed: a clock-in of theirs waits on it.
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO attendance (user_id, facility_id, status, clock_in_at, clock_in_latitude,
                                 clock_in_longitude, distance_m)
         VALUES ($1, $2, 'open', now(), -1.9456, 30.1270, 0)",
    )
    .bind(held.id)
    .bind(facility)
    .execute(&mut *holder)
    .await
    .unwrap();
    let clock_in = |user: &crate::helpers::TestUser| {
        std::sync::Arc::new(NewClockIn {
            user_id: user.id,
            email: user.email.clone(),
            facility_id: facility,
            point: field_attendance::domain::GeoPoint::new(SITE.0, SITE.1).unwrap(),
            accuracy_m: None,
            occurred_at: Utc::now(),
            client_timestamp: None,
            distance: 0.0,
            outside: false,
            device_id: None,
            client_id: None,
            notes: None,
            ip: None,
            user_agent: None,
        })
    };
    // Both queued before the coalescer's task first runs: one batch.
    let coalescer = Coalescer::new(app.db.clone(), ClockIns, std::time::Duration::from_secs(30));
    let both = async {
        tokio::join!(
            coalescer.submit(clock_in(&held)),
            coalescer.submit(clock_in(&free))
        )
    };
    let (first, second) = tokio::time::timeout(std::time::Duration::from_secs(10), both)
        .await
        .expect("the batch gave up on the held row, rather than wait with it");
    // Nothing of the batch was written: each request is served alone, where only the first
    // user's waits.
    assert!(matches!(first, Shared::Alone), "{first:?}");
    assert!(matches!(second, Shared::Alone), "{second:?}");
    assert_eq!(app.attendance_rows().await, 0);
    holder.rollback().await.unwrap();
}

#[tokio::test]
async fn two_clock_outs_of_one_shift_in_one_batch_close_it_once_with_the_first() {
    use field_attendance::db::clock_outs::{CloseShift, ShiftCloses, open_shift};
    use field_attendance::db::coalesce::Batch;
    let app = TestApp::spawn().await;
    let (user, facility) = user_at_site(&app, "focal", None).await;
    app.insert_attendance(
        user.id,
        facility,
        Utc::now() - Duration::hours(2),
        None,
        "open",
    )
    .await;
    let open = open_shift(&app.db, user.id).await.unwrap().unwrap();
    let close = |notes: &str| {
        std::sync::Arc::new(CloseShift {
            id: open.row.id,
            change_xid: open.change_xid.clone(),
            user_id: user.id,
            email: user.email.clone(),
            occurred_at: Utc::now(),
            sent_at: None,
            point: field_attendance::domain::GeoPoint::new(SITE.0, SITE.1).unwrap(),
            accuracy_m: None,
            distance: 0.0,
            outside: false,
            notes: Some(notes.to_string()),
            ip: None,
            user_agent: None,
        })
    };

    let answers = ShiftCloses
        .run(
            &mut app.db.acquire().await.unwrap(),
            &[close("first"), close("second")],
        )
        .await
        .unwrap();

    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].as_ref().unwrap().notes.as_deref(), Some("first"));
    assert!(answers[1].is_none());
    let (notes, audits): (String, i64) = sqlx::query_as(
        "SELECT a.notes, (SELECT count(*) FROM activities WHERE action = 'attendance.clock_out')
         FROM attendance a WHERE a.id = $1",
    )
    .bind(open.row.id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((notes.as_str(), audits), ("first", 1));
}

#[tokio::test]
async fn the_geofence_flags_a_point_500_m_away_but_not_150_m() {
    let app = TestApp::spawn().await;
    let (near_user, _) = user_at_site(&app, "focal", None).await;
    let (far_user, _) = user_at_site(&app, "focal", None).await;
    let (_, near) = clock_in(
        &app,
        &near_user,
        json!({"latitude": SITE.0 + 150.0 * DEG_PER_M, "longitude": SITE.1}),
    )
    .await;
    let (_, far) = clock_in(
        &app,
        &far_user,
        json!({"latitude": SITE.0 + 500.0 * DEG_PER_M, "longitude": SITE.1}),
    )
    .await;
    assert_eq!(near["outside_geofence"], false, "{near}");
    assert!((near["distance_m"].as_f64().unwrap() - 150.0).abs() < 1.0);
    assert_eq!(far["outside_geofence"], true, "{far}");
    assert!((far["distance_m"].as_f64().unwrap() - 500.0).abs() < 1.0);
    // A clock-out far from the facility flags the shift too.
    let (status, closed) = clock_out(
        &app,
        &near_user,
        json!({"latitude": SITE.0 + 500.0 * DEG_PER_M, "longitude": SITE.1}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{closed}");
    assert_eq!(closed["outside_geofence"], true, "{closed}");
}

#[tokio::test]
async fn an_enforced_geofence_refuses_far_clock_ins() {
    let app = TestApp::spawn_with(|env| {
        env.insert("GEOFENCE_ENFORCE".into(), "true".into());
    })
    .await;
    let (user, _) = user_at_site(&app, "focal", None).await;
    let (status, body) = clock_in(
        &app,
        &user,
        json!({"latitude": SITE.0 + 500.0 * DEG_PER_M, "longitude": SITE.1}),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    let rows = app.attendance_rows().await;
    assert_eq!(rows, 0);
    assert_eq!(
        clock_in(
            &app,
            &user,
            json!({"latitude": SITE.0 + 150.0 * DEG_PER_M, "longitude": SITE.1})
        )
        .await
        .0,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn times_outside_the_accepted_window_and_bad_input_are_refused() {
    let app = TestApp::spawn().await;
    let (user, _) = user_at_site(&app, "focal", None).await;
    let with = |k: &str, v: Value| {
        let mut b = at_site();
        b[k] = v;
        b
    };
    let cases = [
        (
            "future",
            with(
                "occurred_at",
                json!((Utc::now() + Duration::minutes(10)).to_rfc3339()),
            ),
            "occurred_at",
        ),
        (
            "too old",
            with(
                "occurred_at",
                json!((Utc::now() - Duration::days(31)).to_rfc3339()),
            ),
            "occurred_at",
        ),
        (
            "no offset",
            with("occurred_at", json!("2026-11-21T08:00:00")),
            "occurred_at",
        ),
        ("latitude", with("latitude", json!(91.0)), "latitude"),
        ("accuracy", with("accuracy_m", json!(-3)), "accuracy_m"),
        (
            "unknown facility",
            with("facility_id", json!(uuid::Uuid::new_v4())),
            "facility_id",
        ),
        (
            "unknown field",
            with("user_id", json!(uuid::Uuid::new_v4())),
            "user_id",
        ),
    ];
    for (name, body, field) in cases {
        let (status, response) = clock_in(&app, &user, body).await;
        assert_error(
            status,
            &response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert!(
            response["error"]["details"][field].is_array(),
            "{name}: {response}"
        );
    }
    // Everything wrong with a request is told at once.
    let (status, response) = clock_in(
        &app,
        &user,
        json!({"latitude": 91.0, "longitude": -181.0, "accuracy_m": -1}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let mut fields: Vec<&String> = response["error"]["details"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        ["accuracy_m", "latitude", "longitude"],
        "{response}"
    );
    let rows = app.attendance_rows().await;
    assert_eq!(rows, 0);

    assert_eq!(
        clock_in(&app, &user, at_site()).await.0,
        StatusCode::CREATED
    );
    let mut early = at_site();
    early["occurred_at"] = json!((Utc::now() - Duration::hours(1)).to_rfc3339());
    let (status, body) = clock_out(&app, &user, early).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
}

#[tokio::test]
async fn the_same_devices_tap_sent_again_without_a_client_id_returns_its_record() {
    let app = TestApp::spawn().await;
    let (user, _) = user_at_site(&app, "focal", None).await;
    let mut body = at_site();
    body["device_id"] = json!("phone-7");
    body["occurred_at"] = json!((Utc::now() - Duration::minutes(20)).to_rfc3339());
    let (status, first) = clock_in(&app, &user, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    // Resent while the shift is open (the answer was lost), and again after it closed.
    let (status, again) = clock_in(&app, &user, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(clock_out(&app, &user, at_site()).await.0, StatusCode::OK);
    let (status, again) = clock_in(&app, &user, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"]);
    // Another tap with the same device and time, from elsewhere, is no retry: answering with
    // the closed shift would tell the user they are clocked in.
    let mut elsewhere = body;
    elsewhere["latitude"] = json!(SITE.0 + 0.0005);
    let (status, refused) = clock_in(&app, &user, elsewhere).await;
    assert_error(status, &refused, StatusCode::CONFLICT, "conflict");
    let (_, active) = send(app.get("/api/attendance/active").bearer_auth(&user.token)).await;
    assert!(active["attendance"].is_null(), "{active}");
    // And a backdated clock-in retried by its client_id after the shift ended.
    let (other, _) = user_at_site(&app, "focal", None).await;
    let mut body = at_site();
    body["client_id"] = json!("phone-8:backdated");
    body["occurred_at"] = json!((Utc::now() - Duration::minutes(10)).to_rfc3339());
    let (status, second) = clock_in(&app, &other, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    assert_eq!(clock_out(&app, &other, at_site()).await.0, StatusCode::OK);
    let (status, again) = clock_in(&app, &other, body).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], second["id"]);
    let rows = app.attendance_rows().await;
    assert_eq!(rows, 2);
}

#[tokio::test]
async fn a_tap_stamped_ahead_of_the_server_sent_again_after_its_clock_out_returns_its_record() {
    let app = TestApp::spawn().await;
    let (user, _) = user_at_site(&app, "focal", None).await;
    // The phone's clock runs two minutes ahead: the shift is stored at the server's time.
    let mut body = at_site();
    body["device_id"] = json!("phone-7");
    body["occurred_at"] = json!((Utc::now() + Duration::minutes(2)).to_rfc3339());
    let (status, first) = clock_in(&app, &user, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, _) = clock_out(&app, &user, at_site()).await;
    assert_eq!(status, StatusCode::OK);
    // Its answer was lost; the phone sends it again: the same shift, not a second one.
    let (status, again) = clock_in(&app, &user, body).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(app.attendance_rows().await, 1);
}

#[tokio::test]
async fn a_retried_clock_in_with_the_same_client_id_returns_the_same_record() {
    let app = TestApp::spawn().await;
    let (user, _) = user_at_site(&app, "focal", None).await;
    let mut body = at_site();
    body["client_id"] = json!("phone-42:2026-11-21T08:00");
    let (first_status, first) = clock_in(&app, &user, body.clone()).await;
    let (second_status, second) = clock_in(&app, &user, body.clone()).await;
    assert_eq!(
        (first_status, second_status),
        (StatusCode::CREATED, StatusCode::OK)
    );
    assert_eq!(first["id"], second["id"]);
    // Still the same record once the shift is over: a late retry does not start a new one.
    let (status, _) = clock_out(&app, &user, at_site()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, third) = clock_in(&app, &user, body).await;
    assert_eq!(status, StatusCode::OK, "{third}");
    assert_eq!(
        (third["id"].clone(), third["status"].clone()),
        (first["id"].clone(), json!("closed"))
    );
    let rows = app.attendance_rows().await;
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn a_client_id_reused_for_another_clock_in_is_refused_not_answered_with_the_old_one() {
    let app = TestApp::spawn().await;
    let (user, _) = user_at_site(&app, "focal", None).await;
    let mut morning = at_site();
    morning["client_id"] = json!("phone-42:2026-11-21");
    let (status, first) = clock_in(&app, &user, morning.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let mut afternoon = morning.clone();
    afternoon["latitude"] = json!(SITE.0 + 0.001);
    // While the morning's shift is open, another clock-in is the second one it would be.
    let (status, body) = clock_in(&app, &user, afternoon.clone()).await;
    assert_error(status, &body, StatusCode::CONFLICT, "already_clocked_in");
    let (status, _) = clock_out(&app, &user, at_site()).await;
    assert_eq!(status, StatusCode::OK);
    // Once it is closed, the app is told its key is spent rather than handed the morning's
    // closed shift as if the afternoon's had begun.
    let (status, body) = clock_in(&app, &user, afternoon).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("client_id"),
        "{body}"
    );
    assert_eq!(app.attendance_rows().await, 1);
    let (_, active) = send(app.get("/api/attendance/active").bearer_auth(&user.token)).await;
    assert_eq!(active["attendance"], Value::Null);
    // The morning's own retry still gets its record.
    let (status, again) = clock_in(&app, &user, morning).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"]);
}

#[tokio::test]
async fn a_clock_in_retried_after_a_later_shift_or_past_the_time_rules_returns_its_record() {
    let app = TestApp::spawn().await;
    let (user, facility) = user_at_site(&app, "focal", None).await;
    let ago = |minutes| json!((Utc::now() - Duration::minutes(minutes)).to_rfc3339());
    let mut first = at_site();
    first["occurred_at"] = ago(90);
    first["client_id"] = json!("phone-42:first");
    let (status, made) = clock_in(&app, &user, first.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let mut out = at_site();
    out["occurred_at"] = ago(80);
    assert_eq!(clock_out(&app, &user, out).await.0, StatusCode::OK);
    // A later shift, worked and closed, before the phone sends the first clock-in again.
    let mut later = at_site();
    later["occurred_at"] = ago(40);
    assert_eq!(clock_in(&app, &user, later).await.0, StatusCode::CREATED);
    assert_eq!(clock_out(&app, &user, at_site()).await.0, StatusCode::OK);
    let (status, again) = clock_in(&app, &user, first.clone()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], made["id"]);

    // The same device's tap, sent again once past the maximum shift length: its record, not 422.
    let mut tap = at_site();
    tap["device_id"] = json!("phone-42");
    tap["occurred_at"] = ago(0);
    let (status, tapped) = clock_in(&app, &user, tap.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{tapped}");
    let long_ago = Utc::now() - Duration::hours(17);
    sqlx::query(
        "UPDATE attendance SET clock_in_at = $2, client_timestamp = $2, status = 'incomplete'
         WHERE id = $1",
    )
    .bind(
        tapped["id"]
            .as_str()
            .unwrap()
            .parse::<uuid::Uuid>()
            .unwrap(),
    )
    .bind(long_ago)
    .execute(&app.db)
    .await
    .unwrap();
    tap["occurred_at"] = json!(long_ago.to_rfc3339());
    let (status, again) = clock_in(&app, &user, tap.clone()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], tapped["id"]);
    // Another tap that old is still refused.
    tap["device_id"] = json!("phone-43");
    let (status, body) = clock_in(&app, &user, tap).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    let rows = app.attendance_rows().await;
    assert_eq!(rows, 3);

    // The facility closed since: the retry still gets its record.
    let admin = app.admin().await;
    let (status, body) = send(
        app.patch(&format!("/api/facilities/{facility}"))
            .bearer_auth(&admin.token)
            .json(&json!({"status": "maintenance"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, again) = clock_in(&app, &user, first.clone()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], made["id"]);
    // A malformed request is refused for its shape, whatever its client_id names.
    let mut malformed = first.clone();
    malformed["latitude"] = json!(123.0);
    let (status, body) = clock_in(&app, &user, malformed).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    // The same key from another spot is not this clock-in sent again: refused.
    let mut elsewhere = first.clone();
    elsewhere["latitude"] = json!(SITE.0 + 0.001);
    let (status, body) = clock_in(&app, &user, elsewhere).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    // A record deleted since is no answer: the refusal stands.
    sqlx::query("UPDATE attendance SET deleted_at = now() WHERE id = $1")
        .bind(made["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap())
        .execute(&app.db)
        .await
        .unwrap();
    let (status, body) = clock_in(&app, &user, first).await;
    assert_invalid(status, &body, "facility_id");
}

#[tokio::test]
async fn a_retry_of_a_clock_in_deleted_since_is_refused_not_answered_with_it() {
    let app = TestApp::spawn().await;
    let (user, _) = user_at_site(&app, "focal", None).await;
    let mut body = at_site();
    body["client_id"] = json!("phone-42:deleted");
    let (status, made) = clock_in(&app, &user, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    sqlx::query("UPDATE attendance SET deleted_at = now() WHERE id = $1")
        .bind(made["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap())
        .execute(&app.db)
        .await
        .unwrap();
    let (status, answer) = clock_in(&app, &user, body).await;
    assert_error(status, &answer, StatusCode::CONFLICT, "conflict");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deleted"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_clock_out_from_a_phone_running_ahead_is_known_when_sent_again_after_the_next_shift() {
    let app = TestApp::spawn().await;
    let (user, _) = user_at_site(&app, "focal", None).await;
    let start = at_site_stamped(-Duration::minutes(30));
    assert_eq!(clock_in(&app, &user, start).await.0, StatusCode::CREATED);
    // The phone's clock is a second ahead: the shift ends at the server's now, not at the time
    // the phone sent.
    let request = at_site_stamped(Duration::seconds(1));
    let (status, first) = clock_out(&app, &user, request.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let time = |v: &Value| {
        v.as_str()
            .unwrap()
            .parse::<chrono::DateTime<Utc>>()
            .unwrap()
    };
    assert!(time(&first["clock_out_at"]) < time(&request["occurred_at"]));
    // The next shift begins after the time the phone sent; then the lost clock-out comes again.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (status, next) = clock_in(&app, &user, at_site()).await;
    assert_eq!(status, StatusCode::CREATED, "{next}");
    clock_out_sent_again(&app, &user, request, &first, &next).await;
}

#[tokio::test]
async fn a_clock_out_from_a_phone_running_ahead_sent_again_within_its_lead_leaves_the_new_shift_open()
 {
    let app = TestApp::spawn().await;
    let (user, _) = user_at_site(&app, "focal", None).await;
    let start = at_site_stamped(-Duration::minutes(30));
    assert_eq!(clock_in(&app, &user, start).await.0, StatusCode::CREATED);
    // The phone runs three minutes ahead; the user clocks in again before the time it sent.
    let request = at_site_stamped(Duration::minutes(3));
    let (status, first) = clock_out(&app, &user, request.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, next) = clock_in(&app, &user, at_site()).await;
    assert_eq!(status, StatusCode::CREATED, "{next}");
    clock_out_sent_again(&app, &user, request, &first, &next).await;
}

#[tokio::test]
async fn a_clock_out_sent_again_long_after_the_next_clock_in_leaves_the_new_shift_open() {
    let app = TestApp::spawn().await;
    let (user, _) = user_at_site(&app, "focal", None).await;
    let ago = |minutes| at_site_stamped(-Duration::minutes(minutes));
    assert_eq!(clock_in(&app, &user, ago(60)).await.0, StatusCode::CREATED);
    let request = ago(4);
    let (status, first) = clock_out(&app, &user, request.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, next) = clock_in(&app, &user, ago(2)).await;
    assert_eq!(status, StatusCode::CREATED, "{next}");
    // The phone was offline for half an hour before it sent the lost clock-out again.
    sqlx::query(
        "UPDATE activities SET created_at = created_at - interval '30 minutes'
         WHERE action = 'attendance.clock_out'",
    )
    .execute(&app.db)
    .await
    .unwrap();
    clock_out_sent_again(&app, &user, request, &first, &next).await;
}

#[tokio::test]
async fn a_moved_facility_or_user_is_measured_where_it_now_is() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (user, facility) = user_at_site(&app, "focal", None).await;
    let (status, body) = clock_in(&app, &user, at_site()).await;
    assert_eq!(
        (status, body["outside_geofence"].clone()),
        (StatusCode::CREATED, json!(false))
    );
    let (status, _) = clock_out(&app, &user, at_site()).await;
    assert_eq!(status, StatusCode::OK);

    // The facility is moved about 1 km north: the same spot is now outside its geofence.
    let (status, body) = send(
        app.patch(&format!("/api/facilities/{facility}"))
            .bearer_auth(&admin.token)
            .json(&json!({"latitude": SITE.0 + 1000.0 * DEG_PER_M})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = clock_in(&app, &user, at_site()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["outside_geofence"], json!(true));
    let distance = body["distance_m"].as_f64().unwrap();
    assert!((distance - 1000.0).abs() < 5.0, "{distance}");
    let (status, _) = clock_out(&app, &user, at_site()).await;
    assert_eq!(status, StatusCode::OK);

    // The user is moved to a facility here: a clock-in without a facility goes there.
    let here = app.facility_at(SITE.0, SITE.1).await;
    let (status, body) = send(
        app.patch(&format!("/api/users/{}", user.id))
            .bearer_auth(&admin.token)
            .json(&json!({"facility_id": here})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = clock_in(&app, &user, at_site()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (
            body["facility_id"].clone(),
            body["outside_geofence"].clone()
        ),
        (json!(here), json!(false))
    );

    // A deactivated facility takes no clock-in, at once.
    let (status, _) = clock_out(&app, &user, at_site()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(
        app.delete(&format!("/api/facilities/{here}"))
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = clock_in(&app, &user, at_site()).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
}

#[tokio::test]
async fn every_read_is_scoped_by_role() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let backstopper = app.user("backstopper", None).await;
    let (supervisor, _) = user_at_site(&app, "supervisor", Some(backstopper.id)).await;
    let (worker, _) = user_at_site(&app, "focal", Some(supervisor.id)).await;
    let (stranger, _) = user_at_site(&app, "ddo", None).await;
    let unrelated = app.user("supervisor", None).await;
    let (_, mine) = clock_in(&app, &worker, at_site()).await;
    let (_, theirs) = clock_in(&app, &stranger, at_site()).await;
    let (_, boss) = clock_in(&app, &supervisor, at_site()).await;
    let ids = |body: &Value| -> Vec<String> {
        let mut v: Vec<String> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let sorted = |mut v: Vec<&Value>| -> Vec<String> {
        v.sort_by_key(|x| x.as_str().unwrap().to_string());
        v.into_iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect()
    };

    let (_, list) = send(app.get("/api/attendance").bearer_auth(&worker.token)).await;
    assert_eq!(ids(&list), sorted(vec![&mine["id"]]));
    let (_, list) = send(app.get("/api/attendance").bearer_auth(&supervisor.token)).await;
    assert_eq!(ids(&list), sorted(vec![&mine["id"], &boss["id"]]));
    let (_, list) = send(app.get("/api/attendance").bearer_auth(&backstopper.token)).await;
    assert_eq!(ids(&list), sorted(vec![&mine["id"], &boss["id"]]));
    let (_, list) = send(app.get("/api/attendance").bearer_auth(&unrelated.token)).await;
    assert_eq!(list["total"], 0);
    let (_, list) = send(app.get("/api/attendance").bearer_auth(&admin.token)).await;
    assert_eq!(list["total"], 3);
    let (_, list) = send(
        app.get("/api/attendance/my-records")
            .bearer_auth(&supervisor.token),
    )
    .await;
    assert_eq!(ids(&list), sorted(vec![&boss["id"]]));
    // One's own records are one's own: another user's id there is refused, not answered with
    // the caller's records as if they were that user's.
    let (status, body) = send(
        app.get(&format!("/api/attendance/my-records?user_id={}", worker.id))
            .bearer_auth(&supervisor.token),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    let (status, list) = send(
        app.get(&format!(
            "/api/attendance/my-records?user_id={}",
            supervisor.id
        ))
        .bearer_auth(&supervisor.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(ids(&list), sorted(vec![&boss["id"]]));
    // Asking for someone else's records by filter gives nothing, not their records.
    let (_, list) = send(
        app.get(&format!("/api/attendance?user_id={}", stranger.id))
            .bearer_auth(&worker.token),
    )
    .await;
    assert_eq!(list["total"], 0);

    let path = |r: &Value| format!("/api/attendance/{}", r["id"].as_str().unwrap());
    for (viewer, record, expected) in [
        (&worker, &mine, 200),
        (&worker, &theirs, 404),
        (&supervisor, &mine, 200),
        (&backstopper, &mine, 200),
        (&unrelated, &mine, 404),
        (&admin, &theirs, 200),
        (&stranger, &boss, 404),
    ] {
        let (status, body) = send(app.get(&path(record)).bearer_auth(&viewer.token)).await;
        assert_eq!(status.as_u16(), expected, "{body}");
    }
    for path in ["/api/attendance/export", "/api/attendance/summary"] {
        let (status, body) = send(app.get(path).bearer_auth(&worker.token)).await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    }
    // A supervisor naming someone outside their tree, in a summary or an export, gets nothing
    // of theirs; the backstopper's summary reaches two levels down.
    let (status, summary) = send(
        app.get(&format!("/api/attendance/summary?user_id={}", stranger.id))
            .bearer_auth(&supervisor.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["rows"], json!([]));
    let export = app
        .get(&format!(
            "/api/attendance/export?format=csv&user_id={}",
            stranger.id
        ))
        .bearer_auth(&supervisor.token)
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), StatusCode::OK);
    let csv = export.text().await.unwrap();
    assert_eq!(csv.lines().count(), 1, "the header alone: {csv}");
    let (_, summary) = send(
        app.get(&format!("/api/attendance/summary?user_id={}", worker.id))
            .bearer_auth(&backstopper.token),
    )
    .await;
    assert_eq!(summary["rows"][0]["key"], json!(worker.id.to_string()));
    assert_eq!(summary["rows"][0]["records"], 1);
}

#[tokio::test]
async fn the_list_answers_only_what_its_filters_name_page_by_page() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (worker, home) = user_at_site(&app, "focal", None).await;
    let (other, _) = user_at_site(&app, "focal", None).await;
    let elsewhere = app.facility().await;
    let at = |days: i64| Utc::now() - Duration::days(days);
    let hours = Duration::hours(8);
    let a = app
        .insert_attendance(worker.id, home, at(5), Some(at(5) + hours), "closed")
        .await;
    let b = app
        .insert_attendance(worker.id, elsewhere, at(3), Some(at(3) + hours), "closed")
        .await;
    let c = app
        .insert_attendance(worker.id, home, at(2), None, "incomplete")
        .await;
    let d = app
        .insert_attendance(
            worker.id,
            home,
            Utc::now() - Duration::hours(1),
            None,
            "open",
        )
        .await;
    app.insert_attendance(other.id, home, at(3), Some(at(3) + hours), "closed")
        .await;
    let list = |query: String| {
        let request = app
            .get(&format!("/api/attendance?user_id={}&{query}", worker.id))
            .bearer_auth(&admin.token);
        async move {
            let (status, body) = send(request).await;
            assert_eq!(status, StatusCode::OK, "{query}: {body}");
            body
        }
    };
    let ids = |body: &Value| -> Vec<uuid::Uuid> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    let instant = |t: chrono::DateTime<Utc>| t.to_rfc3339().replace('+', "%2B");

    // Newest clock-in first.
    assert_eq!(ids(&list(String::new()).await), [d, c, b, a]);
    assert_eq!(ids(&list("status=closed".into()).await), [b, a]);
    assert_eq!(ids(&list(format!("facility_id={elsewhere}")).await), [b]);
    assert_eq!(
        ids(&list(format!("facility_id={home}&status=incomplete")).await),
        [c]
    );
    let period = format!("from={}&to={}", instant(at(4)), instant(at(1)));
    assert_eq!(ids(&list(period).await), [c, b]);

    // Pages of three: the second holds the last record; each says where it is.
    let first = list("per_page=3".into()).await;
    let second = list("per_page=3&page=2".into()).await;
    assert_eq!(ids(&first), [d, c, b]);
    assert_eq!(ids(&second), [a]);
    for (page, body) in [(1, &first), (2, &second)] {
        assert_eq!(body["page"], page);
        assert_eq!(body["per_page"], 3);
        assert_eq!(body["total"], 4);
    }

    // A deleted record is gone from the list and from its own address.
    sqlx::query("UPDATE attendance SET deleted_at = now() WHERE id = $1")
        .bind(d)
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(ids(&list(String::new()).await), [c, b, a]);
    let (status, body) = send(
        app.get(&format!("/api/attendance/{d}"))
            .bearer_auth(&worker.token),
    )
    .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn exports_are_real_csv_and_xlsx_in_local_time_with_formulas_neutralised() {
    let app = TestApp::spawn().await;
    let supervisor = app.user("supervisor", None).await;
    let (worker, facility) = user_at_site(&app, "focal", Some(supervisor.id)).await;
    let (outsider, outsider_facility) = user_at_site(&app, "focal", None).await;
    // 06:30 UTC is 08:30 in Kigali.
    let day = Utc.with_ymd_and_hms(2026, 10, 5, 6, 30, 0).unwrap();
    let id = app
        .insert_attendance(
            worker.id,
            facility,
            day,
            Some(day + Duration::hours(8)),
            "closed",
        )
        .await;
    // A formula at the start, and one after a `;`, where Excel in French or German splits cells.
    sqlx::query("UPDATE attendance SET notes = '=HYPERLINK(\"http://evil.example\",\"click\");=1+1' WHERE id = $1")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    // Longer than a shift may be: it keeps its clock-out but counts no hours.
    app.insert_attendance(
        worker.id,
        facility,
        day + Duration::days(1),
        Some(day + Duration::days(1) + Duration::hours(20)),
        "incomplete",
    )
    .await;
    app.insert_attendance(
        outsider.id,
        outsider_facility,
        day,
        Some(day + Duration::hours(1)),
        "closed",
    )
    .await;

    let response = app
        .get("/api/attendance/export?format=csv&from=2026-10-01&to=2026-10-31")
        .bearer_auth(&supervisor.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let bytes = response.bytes().await.unwrap();
    assert!(
        bytes.starts_with("\u{FEFF}".as_bytes()),
        "a byte-order mark, so that Excel reads the accents as UTF-8"
    );
    let mut reader = csv::Reader::from_reader(bytes.as_ref());
    let headers = reader.headers().unwrap().clone();
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 2, "only the supervisor's team");
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    assert_eq!(&rows[0][col("clock_in")], "2026-10-05 08:30:00");
    assert_eq!(&rows[0][col("clock_out")], "2026-10-05 16:30:00");
    assert_eq!(&rows[0][col("hours")], "8.00");
    assert_eq!(
        &rows[0][col("notes")],
        "'=HYPERLINK(\"http://evil.example\",\"click\");'=1+1"
    );
    assert_eq!(&rows[1][col("status")], "incomplete");
    assert_eq!(&rows[1][col("hours")], "");
    assert_eq!(&rows[0][col("email")], worker.email);

    let response = app
        .get("/api/attendance/export?format=xlsx&tz=UTC")
        .bearer_auth(&supervisor.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.bytes().await.unwrap().to_vec();
    use calamine::Reader;
    let mut workbook: calamine::Xlsx<_> = calamine::Xlsx::new(std::io::Cursor::new(bytes)).unwrap();
    let range = workbook.worksheet_range("Attendance").unwrap();
    assert_eq!(range.height(), 3, "header and two rows");
    let cell = |r: usize, c: usize| range.get((r, c)).unwrap().to_string();
    assert_eq!(cell(0, 8), "clock_in");
    // Times, hours and the geofence flag are values a spreadsheet sums, sorts and filters.
    let serial = |t: chrono::DateTime<Utc>| {
        let epoch = Utc.with_ymd_and_hms(1899, 12, 30, 0, 0, 0).unwrap();
        (t - epoch).num_seconds() as f64 / 86_400.0
    };
    match range.get((1, 8)).unwrap() {
        calamine::Data::DateTime(t) => assert!((t.as_f64() - serial(day)).abs() < 1e-6, "{t:?}"),
        other => panic!("clock_in is not a date-time: {other:?}"),
    }
    assert_eq!(range.get((1, 10)), Some(&calamine::Data::Float(8.0)));
    assert_eq!(range.get((1, 12)), Some(&calamine::Data::Bool(false)));
    assert_eq!(range.get((2, 10)), Some(&calamine::Data::Empty));
    // A workbook's text cell never runs: the note reads as written, and no cell is a formula.
    assert_eq!(
        cell(1, 14),
        "=HYPERLINK(\"http://evil.example\",\"click\");=1+1"
    );
    let formulas = workbook.worksheet_formula("Attendance").unwrap();
    assert!(formulas.used_cells().all(|(_, _, f)| f.is_empty()));
}

#[tokio::test]
async fn periods_out_of_range_or_reversed_are_refused_and_blank_bounds_are_no_bounds() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    for path in [
        "/api/attendance/summary?from=-5000-01-01&to=2026-01-01",
        "/api/attendance/export?from=-5000-01-01",
        "/api/attendance/export?to=12026-01-01",
        "/api/attendance/export?from=2026-12-01&to=2026-11-01",
        "/api/attendance/summary?from=2026-12-01&to=2026-11-01",
        "/api/attendance?from=2026-12-01T00:00:00Z&to=2026-11-01T00:00:00Z",
        "/api/attendance/my-records?from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z",
        "/api/activities?from=2026-12-01T00:00:00Z&to=2026-11-01T00:00:00Z",
        "/api/activities?from=-5000-01-01T00:00:00Z",
        // A date `to` the day before `from`: the same instant as bounds, but reversed.
        "/api/attendance/export?from=2026-11-02&to=2026-11-01",
        "/api/attendance?from=2026-11-02&to=2026-11-01",
        // With no `to`, the period ends now.
        "/api/attendance/summary?from=2999-01-01",
    ] {
        let (status, body) = send(app.get(path).bearer_auth(&admin.token)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {body}");
        assert_eq!(body["error"]["code"], "validation_failed", "{path}: {body}");
    }
    for path in [
        "/api/attendance/export?from=&to=&tz=",
        "/api/attendance/summary?from=&to=",
        // The widest dates as written, whatever they come to in UTC.
        "/api/attendance/export?from=0001-01-01&to=9999-12-31",
        "/api/attendance/summary?from=0001-01-01&to=9999-12-31",
        // An empty period is an empty answer.
        "/api/attendance?from=2026-12-01T00:00:00Z&to=2026-12-01T00:00:00Z",
        "/api/attendance/summary?from=2026-12-01T00:00:00Z&to=2026-12-01T00:00:00Z",
        // Lists take dates and blank bounds as exports and summaries do.
        "/api/attendance?from=&to=",
        "/api/attendance?from=2026-12-01&to=2026-12-01",
        "/api/attendance/my-records?from=2026-12-01&to=",
        "/api/activities?from=&to=2026-12-01",
    ] {
        let (status, body) = send(app.get(path).bearer_auth(&admin.token)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    let (_, body) = send(
        app.get("/api/attendance/summary?from=2999-01-01")
            .bearer_auth(&admin.token),
    )
    .await;
    let reason = body["error"]["details"]["from"][0].as_str().unwrap();
    assert!(reason.contains("past"), "{reason}");
    // A period's bounds answer as RFC 3339 times, in years 1 to 9999, however they were given.
    for path in [
        "/api/attendance/summary?from=0001-01-01&to=9999-12-31&tz=America/Chicago",
        "/api/attendance/summary?to=0001-01-10",
    ] {
        let (status, body) = send(app.get(path).bearer_auth(&admin.token)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        for bound in ["from", "to"] {
            let text = body[bound].as_str().unwrap();
            let year = chrono::DateTime::parse_from_rfc3339(text)
                .unwrap_or_else(|e| panic!("{path}: {bound} {text}: {e}"))
                .year();
            assert!((1..=9999).contains(&year), "{path}: {bound} {text}");
        }
    }
    // Without `from`, thirty days of the report's calendar, across a change of clocks
    // (New York left summer time on 1 November 2026): from a local midnight.
    let (status, body) = send(
        app.get("/api/attendance/summary?to=2026-11-05&tz=America/New_York")
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bound = |name: &str| {
        chrono::DateTime::parse_from_rfc3339(body[name].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc)
    };
    assert_eq!(
        bound("to").to_rfc3339(),
        "2026-11-06T05:00:00+00:00",
        "{body}"
    );
    assert_eq!(
        bound("from").to_rfc3339(),
        "2026-10-07T04:00:00+00:00",
        "{body}"
    );
    // A start whose midnight the clocks skip (Beirut, 31 March 2024): its first minute.
    let (status, body) = send(
        app.get("/api/attendance/summary?to=2024-04-29&tz=Asia/Beirut")
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(body["from"].as_str().unwrap())
            .unwrap()
            .to_rfc3339(),
        "2024-03-30T22:00:00+00:00",
        "{body}"
    );
    // The admin's own login is in the trail: a blank filter does not hide it.
    let (status, body) = send(
        app.get("/api/activities?action=&entity_type=")
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["total"].as_i64().unwrap() > 0, "{body}");
}

#[tokio::test]
async fn an_export_while_the_database_is_away_answers_503_not_a_broken_file() {
    let (proxy, app) = TestApp::spawn_through_proxy(|env| {
        env.insert("DB_ACQUIRE_TIMEOUT_SECS".into(), "1".into());
    })
    .await;
    let supervisor = app.user("supervisor", None).await;
    let export = || {
        app.get("/api/attendance/export?format=csv")
            .bearer_auth(&supervisor.token)
            .send()
    };
    // The caller's session is known to the service before the database goes.
    assert_eq!(export().await.unwrap().status(), StatusCode::OK);
    proxy.cut();
    let response = export().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
}

/// A supervisor over some 40 MB of CSV: more than every buffer between Postgres and the client
/// holds.
async fn supervisor_of_40_mb_of_csv(app: &TestApp) -> TestUser {
    let supervisor = app.user("supervisor", None).await;
    let (worker, facility) = user_at_site(app, "focal", Some(supervisor.id)).await;
    sqlx::query(
        "INSERT INTO attendance (user_id, facility_id, status, clock_in_at, clock_out_at,
                                 clock_in_latitude, clock_in_longitude, distance_m, notes)
         SELECT $1, $2, 'closed', now() - make_interval(mins => i + 60),
                now() - make_interval(mins => i), -1.9456, 30.127, 0, repeat('n', 300)
         FROM generate_series(1, 100000) AS i",
    )
    .bind(worker.id)
    .bind(facility)
    .execute(&app.db)
    .await
    .unwrap();
    supervisor
}

/// Waits, ten seconds at most, until no export's query runs; panics with `what` after.
async fn until_no_export_query(app: &TestApp, what: &str) {
    app.until_none_running("FROM attendance", what).await;
}

#[tokio::test]
async fn an_export_nobody_reads_lets_go_of_its_database_connection() {
    // A pool of 4 runs one export at a time.
    let app = TestApp::spawn_with(|env| {
        env.insert("REQUEST_TIMEOUT_SECS".into(), "1".into());
        env.insert("DB_MAX_CONNECTIONS".into(), "4".into());
    })
    .await;
    let supervisor = supervisor_of_40_mb_of_csv(&app).await;
    let unread = app
        .get("/api/attendance/export?format=csv")
        .bearer_auth(&supervisor.token)
        .send()
        .await
        .unwrap();
    assert_eq!(unread.status(), StatusCode::OK);
    // The download holds the export's turn while nobody reads it, until it is cut off for
    // taking nothing for the request's time (a second here); then the turn is free again.
    let small = || {
        app.get("/api/attendance/export?format=csv&from=2000-01-01&to=2000-01-02")
            .bearer_auth(&supervisor.token)
            .send()
    };
    assert_eq!(
        small().await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the unread download still holds its turn"
    );
    let started = std::time::Instant::now();
    while small().await.unwrap().status() != StatusCode::OK {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the unread download is never cut off"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    until_no_export_query(&app, "the export lets go of its connection").await;
    assert!(
        unread.bytes().await.is_err(),
        "a cut-off export ends as a broken download, not as a short file that looks whole"
    );
    // A workbook is written before it is sent: one too large for the request's time is
    // answered 503, and its export stops and lets go of its connection.
    let response = app
        .get("/api/attendance/export?format=xlsx")
        .bearer_auth(&supervisor.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    until_no_export_query(&app, "the workbook's export lets go of its connection").await;
    let response = app
        .get("/api/attendance/export?format=xlsx&from=2000-01-01&to=2000-01-02")
        .bearer_auth(&supervisor.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn exports_take_a_quarter_of_the_pool_at_most() {
    // A pool of 4 runs one export at a time.
    let app = TestApp::spawn_with(|env| {
        env.insert("DB_MAX_CONNECTIONS".into(), "4".into());
    })
    .await;
    let supervisor = supervisor_of_40_mb_of_csv(&app).await;
    // The first export's query waits on the table.
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE attendance IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let first = tokio::spawn(
        app.get("/api/attendance/export?format=csv")
            .bearer_auth(&supervisor.token)
            .send(),
    );
    app.until_waiting_on_locks(1, "the first export waits on the table")
        .await;
    // Another is refused for now rather than take the rest of the pool.
    let (status, body) = send(
        app.get("/api/attendance/export?format=xlsx")
            .bearer_auth(&supervisor.token),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    lock.commit().await.unwrap();
    let response = first.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Its rows go to a file as fast as the database sends them: the query ends, and lets go of
    // its connection, before the client has read anything.
    until_no_export_query(&app, "the export lets go of its connection, unread").await;
    let csv = response.bytes().await.unwrap();
    assert_eq!(csv.iter().filter(|b| **b == b'\n').count(), 100_001);
    // The first one done, the next goes.
    let response = app
        .get("/api/attendance/export?format=xlsx")
        .bearer_auth(&supervisor.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn time_that_shifts_of_one_worker_overlap_counts_once_in_the_summary() {
    let app = TestApp::spawn().await;
    let supervisor = app.user("supervisor", None).await;
    let (worker, facility) = user_at_site(&app, "focal", Some(supervisor.id)).await;
    let (outsider, outsider_facility) = user_at_site(&app, "focal", None).await;
    let utc = |d: u32, h: u32| Utc.with_ymd_and_hms(2026, 10, d, h, 0, 0).unwrap();
    // Oct 5: one shift stored twice (online, and from a phone that recorded it offline): 8 h.
    // Oct 6: 06-10 and 08-12: 6 h. Oct 7: 06-14 and, within it, 08-10: 8 h. A night shift
    // stored twice, one copy begun at 23:00 on Oct 8, the other at midnight: 8 h, on Oct 8.
    // Oct 12: 06-14 at another facility, then 08-16 at the worker's own: 10 h, 2 of them at
    // the worker's own. Oct 14: a shift of 60 h (as long as a closed one can be under a
    // `MAX_SHIFT_HOURS` of 72), and on Oct 16, within it, 06-10: 60 h, on Oct 14.
    let elsewhere = app.facility().await;
    for (at, from, to) in [
        (facility, utc(5, 6), utc(5, 14)),
        (facility, utc(5, 6), utc(5, 14)),
        (facility, utc(6, 6), utc(6, 10)),
        (facility, utc(6, 8), utc(6, 12)),
        (facility, utc(7, 6), utc(7, 14)),
        (facility, utc(7, 8), utc(7, 10)),
        (facility, utc(8, 23), utc(9, 7)),
        (facility, utc(9, 0), utc(9, 7)),
        (elsewhere, utc(12, 6), utc(12, 14)),
        (facility, utc(12, 8), utc(12, 16)),
        (facility, utc(14, 0), utc(16, 12)),
        (facility, utc(16, 6), utc(16, 10)),
    ] {
        app.insert_attendance(worker.id, at, from, Some(to), "closed")
            .await;
    }
    app.insert_attendance(
        outsider.id,
        outsider_facility,
        utc(5, 6),
        Some(utc(5, 14)),
        "closed",
    )
    .await;
    let (status, by_user) = send(
        app.get("/api/attendance/summary?from=2026-10-01&to=2026-10-31&group_by=user&tz=UTC")
            .bearer_auth(&supervisor.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{by_user}");
    let rows = by_user["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "only the supervisor's team: {by_user}");
    assert_eq!(rows[0]["key"], json!(worker.id.to_string()));
    assert_eq!(rows[0]["records"], 12);
    assert_eq!(rows[0]["hours_worked"], 100.0);
    let hours = |query: &str| {
        let request = app
            .get(&format!("/api/attendance/summary?tz=UTC&{query}"))
            .bearer_auth(&supervisor.token);
        async move {
            let (status, body) = send(request).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let rows = body["rows"].as_array().unwrap();
            rows.iter()
                .map(|r| r["hours_worked"].as_f64().unwrap())
                .collect::<Vec<_>>()
        }
    };
    // The days add up to the worker's hours: the copy begun on Oct 9 adds nothing there.
    assert_eq!(
        hours("from=2026-10-01&to=2026-10-31&group_by=day").await,
        [8.0, 6.0, 8.0, 8.0, 0.0, 10.0, 60.0, 0.0]
    );
    // A day, or a facility, asked for alone counts as it does among the others: the shift
    // begun before the period, or elsewhere, still covers its time.
    assert_eq!(
        hours("from=2026-10-09&to=2026-10-09&group_by=day").await,
        [0.0]
    );
    assert_eq!(
        hours("from=2026-10-16&to=2026-10-16&group_by=day").await,
        [0.0]
    );
    let own = format!("from=2026-10-12&to=2026-10-12&group_by=facility&facility_id={facility}");
    assert_eq!(hours(&own).await, [2.0]);
    assert_eq!(
        hours("from=2026-10-12&to=2026-10-12&group_by=facility")
            .await
            .iter()
            .sum::<f64>(),
        10.0
    );
}

#[tokio::test]
async fn a_summary_with_no_period_counts_thirty_whole_local_days_up_to_today() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (worker, facility) = user_at_site(&app, "focal", None).await;
    // Kigali is UTC+2, with no summer time.
    let kigali = chrono::FixedOffset::east_opt(2 * 3600).unwrap();
    let today = Utc::now().with_timezone(&kigali).date_naive();
    let local = |days_back: u64, h: u32, m: u32| {
        let day = today
            .checked_sub_days(chrono::Days::new(days_back))
            .unwrap();
        day.and_hms_opt(h, m, 0)
            .unwrap()
            .and_local_timezone(kigali)
            .unwrap()
            .with_timezone(&Utc)
    };
    // The first minutes of the first day, and the last of the day before it.
    for start in [local(29, 0, 30), local(30, 23, 0)] {
        app.insert_attendance(
            worker.id,
            facility,
            start,
            Some(start + Duration::minutes(50)),
            "closed",
        )
        .await;
    }
    let (status, body) = send(
        app.get("/api/attendance/summary?group_by=day&tz=Africa/Kigali")
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let from = chrono::DateTime::parse_from_rfc3339(body["from"].as_str().unwrap()).unwrap();
    assert_eq!(from, local(29, 0, 0), "{body}");
    let days: Vec<&str> = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    let first = today.checked_sub_days(chrono::Days::new(29)).unwrap();
    assert_eq!(days, [first.to_string()], "{body}");
}

#[tokio::test]
async fn a_summary_in_cet_keeps_summer_time_as_the_period_does() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (worker, facility) = user_at_site(&app, "focal", None).await;
    // 22:30 UTC on July 1 is 00:30 on July 2 in CET's summer time (UTC+2).
    let start = Utc.with_ymd_and_hms(2026, 7, 1, 22, 30, 0).unwrap();
    app.insert_attendance(
        worker.id,
        facility,
        start,
        Some(start + Duration::hours(8)),
        "closed",
    )
    .await;
    let (status, by_day) = send(
        app.get("/api/attendance/summary?from=2026-07-01&to=2026-07-31&group_by=day&tz=CET")
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{by_day}");
    assert_eq!(by_day["rows"][0]["key"], "2026-07-02", "{by_day}");
}

#[tokio::test]
async fn summaries_match_hand_computed_figures_including_a_shift_across_midnight() {
    let app = TestApp::spawn().await;
    let supervisor = app.user("supervisor", None).await;
    let (worker, facility) = user_at_site(&app, "focal", Some(supervisor.id)).await;
    // Kigali is UTC+2. Local times:
    //   Oct 5 08:00-16:00 (8 h); Oct 6 22:00 - Oct 7 06:00 (8 h, across midnight, counted on Oct 6);
    //   Oct 8 07:00 forgotten (incomplete, no hours), outside the geofence.
    let utc = |d: u32, h: u32| Utc.with_ymd_and_hms(2026, 10, d, h, 0, 0).unwrap();
    app.insert_attendance(worker.id, facility, utc(5, 6), Some(utc(5, 14)), "closed")
        .await;
    app.insert_attendance(worker.id, facility, utc(6, 20), Some(utc(7, 4)), "closed")
        .await;
    let forgotten = app
        .insert_attendance(worker.id, facility, utc(8, 5), None, "incomplete")
        .await;
    sqlx::query("UPDATE attendance SET outside_geofence = true WHERE id = $1")
        .bind(forgotten)
        .execute(&app.db)
        .await
        .unwrap();

    let get = |query: &str| {
        send(
            app.get(&format!(
                "/api/attendance/summary?from=2026-10-01&to=2026-10-31&{query}"
            ))
            .bearer_auth(&supervisor.token),
        )
    };
    let (status, by_user) = get("group_by=user").await;
    assert_eq!(status, StatusCode::OK, "{by_user}");
    let row = &by_user["rows"][0];
    assert_eq!(row["key"], json!(worker.id.to_string()));
    assert_eq!(
        (
            row["records"].as_i64(),
            row["days_present"].as_i64(),
            row["hours_worked"].as_f64()
        ),
        (Some(3), Some(3), Some(16.0))
    );
    assert_eq!(
        (
            row["incomplete"].as_i64(),
            row["open"].as_i64(),
            row["outside_geofence"].as_i64()
        ),
        (Some(1), Some(0), Some(1))
    );

    let (_, by_day) = get("group_by=day").await;
    let days: Vec<(String, f64, i64)> = by_day["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_string(),
                r["hours_worked"].as_f64().unwrap(),
                r["incomplete"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        days,
        vec![
            ("2026-10-05".into(), 8.0, 0),
            ("2026-10-06".into(), 8.0, 0),
            ("2026-10-08".into(), 0.0, 1)
        ]
    );

    // In UTC the night shift starts on Oct 6 20:00 and the forgotten one on Oct 8 05:00: the
    // same days; in Los Angeles (UTC-7 in October) two of them move to the day before.
    let (_, shifted) = get("group_by=day&tz=America/Los_Angeles").await;
    let keys: Vec<&str> = shifted["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec!["2026-10-04", "2026-10-06", "2026-10-07"]);
    // The same offset named `Etc/GMT+7`, its `+` left unencoded in the query string.
    let (status, unencoded) = get("group_by=day&tz=Etc/GMT+7").await;
    assert_eq!(status, StatusCode::OK, "{unencoded}");
    assert_eq!(unencoded["tz"], "Etc/GMT+7");
    assert_eq!(unencoded["rows"], shifted["rows"]);

    let (_, by_facility) = get("group_by=facility").await;
    assert_eq!(by_facility["rows"][0]["key"], json!(facility.to_string()));
    assert_eq!(by_facility["rows"][0]["users_present"], 1);

    let (status, body) = get("tz=Mars/Olympus").await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
}

/// The milliseconds since the Unix epoch that a version 7 id carries.
fn v7_millis(id: uuid::Uuid) -> i64 {
    assert_eq!(id.get_version_num(), 7, "{id} is not a version 7 id");
    assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
    let (secs, nanos) = id.get_timestamp().expect("a v7 id has a time").to_unix();
    secs as i64 * 1000 + i64::from(nanos / 1_000_000)
}

#[tokio::test]
async fn ids_made_by_the_server_are_time_ordered() {
    let app = TestApp::spawn().await;
    let (first, _) = user_at_site(&app, "focal", None).await;
    let (second, _) = user_at_site(&app, "focal", None).await;
    let before = Utc::now().timestamp_millis();
    let (status, a) = clock_in(&app, &first, at_site()).await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (status, b) = clock_in(&app, &second, at_site()).await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    let after = Utc::now().timestamp_millis();
    let id = |v: &Value| v["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap();
    let (a, b) = (id(&a), id(&b));
    for at in [v7_millis(a), v7_millis(b)] {
        assert!(
            (before..=after).contains(&at),
            "{at} not in {before}..={after}"
        );
    }
    assert!(
        a < b,
        "the later clock-in sorts after the earlier one: {a} {b}"
    );

    // The audit rows, made by the database's own default, are the same kind.
    let audit: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM activities WHERE action = 'attendance.clock_in' ORDER BY created_at",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(audit.len(), 2);
    for at in audit.iter().map(|id| v7_millis(*id)) {
        assert!(
            (before..=after).contains(&at),
            "{at} not in {before}..={after}"
        );
    }
    assert!(audit[0] < audit[1], "{audit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_in_cut_off_mid_statement_answers_503_stores_nothing_and_its_retry_stores_one() {
    // One connection, so that the one cut is the only one the pool had.
    let (proxy, app) = TestApp::spawn_through_proxy(|env| {
        env.insert("DB_MAX_CONNECTIONS".into(), "1".into());
    })
    .await;
    gate_clock_ins(&app).await;
    let (user, _) = user_at_site(&app, "focal", None).await;
    let mut body = at_site();
    body["notes"] = json!("hold");
    body["client_id"] = json!("phone-9:2026-12-02T07:30");

    // The clock-in waits inside its statement; then the service loses its connection (new
    // connections still get through).
    let gate = close_gate(&app).await;
    let cut_off = tokio::spawn(clock_in_task(&app, &user, body.clone()));
    wait_until_held(&app, 1).await;
    proxy.sever();
    // It answers at once: writing the clock-in again would wait on the gate behind the first.
    let (status, answer) = tokio::time::timeout(std::time::Duration::from_secs(5), cut_off)
        .await
        .expect("the cut-off clock-in is answered, not written again")
        .unwrap();
    assert_error(
        status,
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    assert_eq!(clock_in_attempts(&app).await, 1);

    // Its transaction ends with its connection: once the gate opens, nothing of it is stored.
    release(gate).await;
    until_no_insert_runs(&app).await;
    assert_eq!(app.attendance_rows().await, 0);

    // The phone retries with the same client_id until it hears an answer: one record.
    let mut attempts = 0;
    let retried = loop {
        let (status, answer) = clock_in(&app, &user, body.clone()).await;
        if status != StatusCode::SERVICE_UNAVAILABLE || attempts == 20 {
            break (status, answer);
        }
        attempts += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(retried.0, StatusCode::CREATED, "{}", retried.1);
    let (rows, audits): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM attendance),
                (SELECT count(*) FROM activities WHERE action = 'attendance.clock_in')",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((rows, audits), (1, 1));
}

#[tokio::test]
async fn a_summary_past_the_request_timeout_is_cancelled_in_the_database_too() {
    // Arrange: the table locked, so that the summary's query waits.
    let app = TestApp::spawn_timing_out_after_a_second().await;
    let admin = app.admin().await;
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE attendance IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();

    // Act
    let (status, body) = send(app.get("/api/attendance/summary").bearer_auth(&admin.token)).await;

    // Assert: the request gave up, and so did its query, though the lock is still held.
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    app.until_none_running(
        "covered",
        "the summary's query is cancelled while the lock is held",
    )
    .await;
    lock.rollback().await.unwrap();
}
