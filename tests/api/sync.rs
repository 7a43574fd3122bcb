//! Offline batch sync: idempotent pushes, conflicts, the manual queue, and pulls that never
//! skip a change.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, TestUser, assert_error, assert_invalid, require_pgbouncer, send};

const SITE: (f64, f64) = (-1.9456, 30.1270);

/// A closed shift `days_ago` days back, starting at `hour` UTC, on the given device.
fn shift(id: Uuid, facility: Uuid, days_ago: i64, hour: u32, version: i32) -> Value {
    let start = (Utc::now() - Duration::days(days_ago))
        .date_naive()
        .and_hms_opt(hour, 0, 0)
        .unwrap()
        .and_utc();
    json!({
        "kind": "attendance", "op": "upsert", "id": id, "sync_version": version,
        "client_timestamp": start.to_rfc3339(),
        "data": {
            "facility_id": facility,
            "clock_in_at": start.to_rfc3339(),
            "clock_out_at": (start + Duration::hours(4)).to_rfc3339(),
            "clock_in_location": {"latitude": SITE.0, "longitude": SITE.1, "accuracy_m": 10.0},
            "clock_out_location": {"latitude": SITE.0, "longitude": SITE.1},
            "notes": "offline"
        }
    })
}

/// A shift opened `minutes_ago` and not closed yet.
fn open_shift(facility: Uuid, minutes_ago: i64) -> Value {
    let mut open = shift(Uuid::new_v4(), facility, 0, 0, 1);
    let at = (Utc::now() - Duration::minutes(minutes_ago)).to_rfc3339();
    open["client_timestamp"] = json!(at);
    open["data"]["clock_in_at"] = json!(at);
    open["data"]["clock_out_at"] = Value::Null;
    open["data"]["clock_out_location"] = Value::Null;
    open
}

/// The deletion, on version 1, of the record `id`, stamped `minutes_ago` on the device.
fn deletion(id: &Value, minutes_ago: i64) -> Value {
    json!({"kind": "attendance", "op": "delete", "id": id, "sync_version": 1,
           "client_timestamp": (Utc::now() - Duration::minutes(minutes_ago)).to_rfc3339()})
}

async fn push(app: &TestApp, user: &TestUser, records: Vec<Value>) -> (StatusCode, Value) {
    send(
        app.post("/api/sync/push")
            .bearer_auth(&user.token)
            .json(&json!({"device_id": "device-A", "records": records})),
    )
    .await
}

/// Clocks the user in online, at the site; the record.
async fn clock_in_online(app: &TestApp, user: &TestUser) -> Value {
    let (status, record) = send(
        app.post("/api/attendance/clock-in")
            .bearer_auth(&user.token)
            .json(&json!({"latitude": SITE.0, "longitude": SITE.1})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{record}");
    record
}

/// Clocks the user out online, at the site; the record.
async fn clock_out_online(app: &TestApp, user: &TestUser) -> Value {
    let (status, record) = send(
        app.post("/api/attendance/clock-out")
            .bearer_auth(&user.token)
            .json(&json!({"latitude": SITE.0, "longitude": SITE.1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    record
}

fn statuses(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_string())
        .collect()
}

async fn setup(app: &TestApp) -> (TestUser, Uuid) {
    let facility = app.facility_at(SITE.0, SITE.1).await;
    (app.quick_user("focal", None, facility).await, facility)
}

#[tokio::test]
async fn a_batch_replayed_three_times_is_stored_once() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let records: Vec<Value> = (0..10)
        .map(|i| shift(Uuid::new_v4(), facility, i + 1, 6, 1))
        .collect();
    let (status, first) = push(&app, &user, records.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert!(statuses(&first).iter().all(|s| s == "created"), "{first}");
    let stored: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT source, device_id, sync_version FROM attendance")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert!(
        stored
            .iter()
            .all(|(s, d, v)| s == "sync" && d == "device-A" && *v == 1)
    );
    for replay in 0..3 {
        // Once at the path the first mobile clients use.
        let path = if replay == 1 {
            "/api/attendance/sync"
        } else {
            "/api/sync/push"
        };
        let (status, again) = send(
            app.post(path)
                .bearer_auth(&user.token)
                .json(&json!({"device_id": "device-A", "records": records})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{path}: {again}");
        assert!(statuses(&again).iter().all(|s| s == "duplicate"), "{again}");
        assert_eq!(again["results"][3]["id"], records[3]["id"]);
        assert_eq!(again["results"][3]["server_version"], 1);
    }
    assert_eq!(app.attendance_rows().await, 10);
    let first_rec = &first["results"][0]["record"];
    assert_eq!(first_rec["source"], "sync");
    assert_eq!(first_rec["duration_s"], 4 * 3600);
}

#[tokio::test]
async fn a_created_record_is_answered_exactly_as_it_is_stored() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let records = vec![
        shift(Uuid::new_v4(), facility, 3, 7, 1),
        open_shift(facility, 30),
    ];
    let (status, body) = push(&app, &user, records.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (k, record) in records.iter().enumerate() {
        let id = record["id"].as_str().unwrap();
        let (status, stored) = send(
            app.get(&format!("/api/attendance/{id}"))
                .bearer_auth(&user.token),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["results"][k]["record"], stored, "record {k}");
    }
    assert_eq!(body["results"][1]["record"]["status"], "open");
    assert_eq!(body["results"][0]["record"]["device_id"], "device-A");

    // A batch that also changes a record is applied under the user's lock: its new records are
    // answered as stored too.
    let mut changed = records[0].clone();
    changed["data"]["notes"] = json!("edited on the device");
    let new = shift(Uuid::new_v4(), facility, 4, 7, 1);
    let (_, body) = push(&app, &user, vec![changed, new.clone()]).await;
    assert_eq!(statuses(&body), vec!["updated", "created"], "{body}");
    let id = new["id"].as_str().unwrap();
    let (_, stored) = send(
        app.get(&format!("/api/attendance/{id}"))
            .bearer_auth(&user.token),
    )
    .await;
    assert_eq!(body["results"][1]["record"], stored);
}

#[tokio::test]
async fn the_same_device_and_client_timestamp_under_a_new_id_is_a_duplicate() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let original = shift(Uuid::new_v4(), facility, 2, 6, 1);
    push(&app, &user, vec![original.clone()]).await;
    let mut regenerated = original.clone();
    regenerated["id"] = json!(Uuid::new_v4());
    let (_, body) = push(&app, &user, vec![regenerated.clone()]).await;
    assert_eq!(statuses(&body), vec!["duplicate"]);
    assert_eq!(body["results"][0]["id"], regenerated["id"]);
    assert_eq!(body["results"][0]["record"]["id"], original["id"]);
    assert_eq!(app.attendance_rows().await, 1);
}

#[tokio::test]
async fn two_users_of_one_shared_device_never_duplicate_each_other() {
    let app = TestApp::spawn().await;
    let (first, facility) = setup(&app).await;
    let second = app.quick_user("focal", None, facility).await;
    let record = shift(Uuid::new_v4(), facility, 2, 6, 1);
    let mut same_moment = record.clone();
    same_moment["id"] = json!(Uuid::new_v4());
    let (_, body) = push(&app, &first, vec![record]).await;
    assert_eq!(statuses(&body), vec!["created"]);
    // The same device ("device-A") and the same client timestamp, but someone else's record.
    let (_, body) = push(&app, &second, vec![same_moment]).await;
    assert_eq!(statuses(&body), vec!["created"], "{body}");
    assert_eq!(body["results"][0]["record"]["user_id"], json!(second.id));
    assert_eq!(app.attendance_rows().await, 2);

    // The phone kept the first user's cursor when the second signed in: going on from it would
    // start where the first user stood, and miss the second's record for good.
    let (status, pulled) = send(app.get("/api/sync/pull").bearer_auth(&first.token)).await;
    assert_eq!(status, StatusCode::OK, "{pulled}");
    let kept = pulled["cursor"].as_str().unwrap();
    let (status, body) = pull_at(&app, &second.token, kept).await;
    assert_invalid(status, &body, "cursor");
    assert_eq!(
        body["error"]["details"]["cursor"][0],
        "was issued to another user: pull again without a cursor"
    );
    let (status, own) = send(app.get("/api/sync/pull").bearer_auth(&second.token)).await;
    assert_eq!(status, StatusCode::OK, "{own}");
    assert_eq!(
        own["changes"]["attendance"]["created"][0]["user_id"],
        json!(second.id)
    );
    let (status, body) = pull_at(&app, &second.token, own["cursor"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_repeat_is_recognised_when_its_client_timestamp_is_finer_than_a_microsecond() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let mut original = shift(Uuid::new_v4(), facility, 2, 6, 1);
    original["client_timestamp"] = json!("2026-01-01T08:00:00.123456789+02:00");
    let (_, body) = push(&app, &user, vec![original.clone()]).await;
    assert_eq!(statuses(&body), vec!["created"], "{body}");
    let mut regenerated = original.clone();
    regenerated["id"] = json!(Uuid::new_v4());
    let (status, body) = push(&app, &user, vec![regenerated]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(statuses(&body), vec!["duplicate"]);
    assert_eq!(body["results"][0]["record"]["id"], original["id"]);
    assert_eq!(app.attendance_rows().await, 1);
}

#[tokio::test]
async fn one_bad_record_is_rejected_and_the_other_49_apply() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let mut records: Vec<Value> = (0..49)
        .map(|i| {
            shift(
                Uuid::new_v4(),
                facility,
                i / 2 + 1,
                if i % 2 == 0 { 5 } else { 11 },
                1,
            )
        })
        .collect();
    let mut bad = shift(Uuid::new_v4(), facility, 3, 20, 1);
    bad["data"]["clock_in_location"]["latitude"] = json!(123.0);
    records.insert(17, bad.clone());
    let (status, body) = push(&app, &user, records).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let s = statuses(&body);
    assert_eq!(s.iter().filter(|s| *s == "created").count(), 49);
    assert_eq!(s[17], "rejected");
    assert_eq!(body["results"][17]["id"], bad["id"]);
    assert_eq!(body["results"][17]["error"]["code"], "validation_failed");
    assert!(
        body["results"][17]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("latitude")
    );
    assert_eq!(app.attendance_rows().await, 49);
}

#[tokio::test]
async fn malformed_records_and_broken_rules_are_rejected_one_by_one() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let good = shift(Uuid::new_v4(), facility, 1, 6, 1);
    let with = |path: &[&str], v: Value| {
        let mut r = shift(Uuid::new_v4(), facility, 2, 6, 1);
        let mut target = &mut r;
        for p in &path[..path.len() - 1] {
            target = &mut target[*p];
        }
        target[path[path.len() - 1]] = v;
        r
    };
    let records = vec![
        good,
        json!({"kind": "attendance", "op": "upsert"}),
        with(&["kind"], json!("payroll")),
        with(
            &["data", "clock_in_at"],
            json!((Utc::now() + Duration::hours(1)).to_rfc3339()),
        ),
        with(
            &["data", "clock_in_at"],
            json!((Utc::now() - Duration::days(40)).to_rfc3339()),
        ),
        with(
            &["data", "clock_out_at"],
            json!((Utc::now() - Duration::days(9)).to_rfc3339()),
        ),
        with(&["data", "facility_id"], json!(Uuid::new_v4())),
        with(&["data", "surprise"], json!(true)),
        with(&["sync_version"], json!(0)),
        // Versions past the bound, and years Postgres cannot keep.
        with(&["sync_version"], json!(i32::MAX)),
        with(&["client_timestamp"], json!("-5000-01-01T00:00:00Z")),
        // Not records at all: each is refused alone, and the batch still applies.
        json!(null),
        json!("x"),
        json!([]),
        json!(7),
    ];
    let unknown_field_id = records[7]["id"].clone();
    let (_, body) = push(&app, &user, records).await;
    assert_eq!(
        statuses(&body),
        vec![
            "created", "rejected", "rejected", "rejected", "rejected", "rejected", "rejected",
            "rejected", "rejected", "rejected", "rejected", "rejected", "rejected", "rejected",
            "rejected"
        ]
    );
    for not_a_record in &body["results"].as_array().unwrap()[11..] {
        assert!(not_a_record["id"].is_null(), "{not_a_record}");
        assert!(
            not_a_record["error"]["message"]
                .as_str()
                .unwrap()
                .contains("JSON object"),
            "{not_a_record}"
        );
    }
    for rejected in &body["results"].as_array().unwrap()[9..] {
        assert_eq!(rejected["error"]["code"], "validation_failed", "{rejected}");
    }
    assert!(body["results"][1]["id"].is_null());
    assert_eq!(body["results"][2]["error"]["code"], "unsupported_kind");
    // A record that does not parse still answers under its id when the id is readable.
    assert_eq!(body["results"][7]["id"], unknown_field_id);
    assert_eq!(body["results"][7]["error"]["code"], "validation_failed");
    assert_eq!(app.attendance_rows().await, 1);
}

#[tokio::test]
async fn a_client_timestamp_past_the_year_9999_in_utc_is_rejected() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let mut record = shift(Uuid::new_v4(), facility, 1, 6, 1);
    // The year 9999 where it was written, 10000 in UTC, as it would be stored and sent back.
    record["client_timestamp"] = json!("9999-12-31T23:30:00-05:00");
    let (_, body) = push(&app, &user, vec![record]).await;
    assert_eq!(statuses(&body), vec!["rejected"], "{body}");
    assert_eq!(body["results"][0]["error"]["code"], "validation_failed");
    assert_eq!(app.attendance_rows().await, 0);
}

#[tokio::test]
async fn a_clock_out_within_the_age_limit_closes_a_shift_begun_just_past_it() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let open = open_shift(facility, 30);
    let (_, body) = push(&app, &user, vec![open.clone()]).await;
    assert_eq!(statuses(&body), vec!["created"]);
    // Clocked in just over 30 days ago (the limit), closed by the sweep since; the phone comes
    // back with the clock-out it took six hours later, within the limit.
    let clock_in: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE attendance SET clock_in_at = now() - interval '30 days 2 hours',
                               status = 'incomplete'
         RETURNING clock_in_at",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    let mut out = open;
    out["data"]["clock_in_at"] = json!(clock_in.to_rfc3339());
    out["data"]["clock_out_at"] = json!((clock_in + Duration::hours(6)).to_rfc3339());
    out["data"]["clock_out_location"] = json!({"latitude": SITE.0, "longitude": SITE.1});
    out["client_timestamp"] = out["data"]["clock_out_at"].clone();
    let (_, body) = push(&app, &user, vec![out]).await;
    assert_eq!(statuses(&body), vec!["updated"], "{body}");
    let stored: Option<DateTime<Utc>> = sqlx::query_scalar("SELECT clock_out_at FROM attendance")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, Some(clock_in + Duration::hours(6)));
}

#[tokio::test]
async fn a_clock_out_stamped_just_before_its_clock_in_ends_the_shift_where_it_began() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    // The phone's clock was set back by network time between the two taps.
    let stamped_before = |id: Uuid, minutes: i64| {
        let mut record = shift(id, facility, 1, 8, 1);
        let start: DateTime<Utc> = record["data"]["clock_in_at"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        record["data"]["clock_out_at"] = json!((start - Duration::minutes(minutes)).to_rfc3339());
        record
    };
    let (within, beyond) = (Uuid::new_v4(), Uuid::new_v4());
    let batch = vec![stamped_before(within, 2), stamped_before(beyond, 10)];
    let (status, body) = push(&app, &user, batch.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(statuses(&body), ["created", "rejected"], "{body}");
    let ended: (DateTime<Utc>, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT clock_in_at, clock_out_at FROM attendance WHERE id = $1")
            .bind(within)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(Some(ended.0), ended.1);
    // Sent again, it is the record stored.
    let (_, body) = push(&app, &user, batch).await;
    assert_eq!(statuses(&body), ["duplicate", "rejected"], "{body}");
}

#[tokio::test]
async fn a_batch_over_the_limit_is_refused_whole() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let records: Vec<Value> = (0..501)
        .map(|i| shift(Uuid::new_v4(), facility, i % 25 + 1, (i % 20) as u32, 1))
        .collect();
    let (status, body) = push(&app, &user, records.clone()).await;
    assert_invalid(status, &body, "records");
    assert_eq!(app.attendance_rows().await, 0);
    // Exactly the limit is one batch, answered record by record.
    let (status, body) = push(&app, &user, records[..500].to_vec()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 500);
    assert!(app.attendance_rows().await > 0);
}

#[tokio::test]
async fn a_record_claiming_another_users_id_is_rejected_and_never_applied() {
    let app = TestApp::spawn().await;
    let (owner, facility) = setup(&app).await;
    let thief = app.quick_user("focal", None, facility).await;
    let record = shift(Uuid::new_v4(), facility, 1, 6, 1);
    push(&app, &owner, vec![record.clone()]).await;
    let mut stolen = record.clone();
    stolen["sync_version"] = json!(5);
    stolen["data"]["notes"] = json!("rewritten by someone else");
    for op in ["upsert", "delete"] {
        stolen["op"] = json!(op);
        let (_, body) = push(&app, &thief, vec![stolen.clone()]).await;
        assert_eq!(statuses(&body), vec!["rejected"]);
        assert_eq!(body["results"][0]["error"]["code"], "forbidden");
        assert!(
            body["results"][0].get("record").is_none(),
            "nothing of the owner's record leaks"
        );
    }
    let (user_id, notes, deleted): (Uuid, String, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT user_id, notes, deleted_at FROM attendance")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(
        (user_id, notes.as_str(), deleted),
        (owner.id, "offline", None)
    );
}

#[tokio::test]
async fn new_records_pushed_beside_stored_ones_are_all_created_and_the_others_answered() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let other = app.quick_user("focal", None, facility).await;
    let kept = shift(Uuid::new_v4(), facility, 1, 6, 1);
    push(&app, &user, vec![kept.clone()]).await;
    let theirs = shift(Uuid::new_v4(), facility, 2, 6, 1);
    push(&app, &other, vec![theirs.clone()]).await;
    let mut claimed = shift(Uuid::new_v4(), facility, 4, 6, 1);
    claimed["id"] = theirs["id"].clone();
    let fresh = [
        shift(Uuid::new_v4(), facility, 3, 6, 1),
        shift(Uuid::new_v4(), facility, 5, 6, 1),
    ];

    let batch = vec![fresh[0].clone(), kept, claimed, fresh[1].clone()];
    let (status, body) = push(&app, &user, batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        statuses(&body),
        vec!["created", "duplicate", "rejected", "created"]
    );
    assert_eq!(body["results"][2]["error"]["code"], "forbidden");
    let mine: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM attendance WHERE user_id = $1 ORDER BY clock_in_at")
            .bind(user.id)
            .fetch_all(&app.db)
            .await
            .unwrap();
    let id = |v: &Value| v["id"].as_str().unwrap().parse::<Uuid>().unwrap();
    assert_eq!(mine.len(), 3);
    assert!(fresh.iter().all(|r| mine.contains(&id(r))));
    let outcomes: Vec<Value> = sqlx::query_scalar(
        "SELECT details->'outcomes' FROM activities WHERE action = 'sync.push' AND actor_id = $1
         ORDER BY created_at",
    )
    .bind(user.id)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        outcomes,
        vec![
            json!({"created": 1}),
            json!({"created": 2, "duplicate": 1, "rejected": 1})
        ],
        "one audit row per push"
    );
}

#[tokio::test]
async fn a_shift_opened_offline_after_a_forgotten_one_closes_that_one_and_is_created() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let forgotten = app.forgotten_shift(user.id, facility).await;
    let (status, body) = push(&app, &user, vec![open_shift(facility, 30)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(statuses(&body), vec!["created"]);
    let status: String = sqlx::query_scalar("SELECT status FROM attendance WHERE id = $1")
        .bind(forgotten)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(status, "incomplete");
    assert_eq!(stored_for(&app, &user, true).await, 1);
}

#[tokio::test]
async fn a_shift_closed_past_the_maximum_is_kept_as_incomplete_and_counts_no_hours() {
    // A clock-out 30 hours after the clock-in (the maximum is 16): online, that shift would have
    // been closed as incomplete. Kept as sent, so a repeat is a duplicate.
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let mut long = shift(Uuid::new_v4(), facility, 3, 6, 1);
    let clock_in: DateTime<Utc> = long["data"]["clock_in_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    long["data"]["clock_out_at"] = json!((clock_in + Duration::hours(30)).to_rfc3339());
    let normal = shift(Uuid::new_v4(), facility, 5, 6, 1);
    let (status, body) = push(&app, &user, vec![long.clone(), normal]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(statuses(&body), vec!["created", "created"]);
    let record = &body["results"][0]["record"];
    assert_eq!(record["status"], "incomplete");
    let clock_out: DateTime<Utc> = record["clock_out_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(clock_out, clock_in + Duration::hours(30));
    assert!(record["duration_s"].is_null());
    let (_, again) = push(&app, &user, vec![long]).await;
    assert_eq!(statuses(&again), vec!["duplicate"]);

    let admin = app.admin().await;
    let (status, summary) = send(
        app.get("/api/attendance/summary?group_by=user")
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    let row = &summary["rows"][0];
    assert_eq!(row["hours_worked"], 4.0, "{summary}");
    assert_eq!(row["incomplete"], 1, "{summary}");
}

#[tokio::test]
async fn records_changed_in_one_action_share_a_client_timestamp_and_all_apply() {
    // A phone stamps everything one tap changes alike: the clock-out of one shift, the clock-in
    // of the next, an edit of an older one. (Two records created under one stamp are one record
    // sent twice.)
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let morning = open_shift(facility, 240);
    let earlier = shift(Uuid::new_v4(), facility, 2, 6, 1);
    let (_, body) = push(&app, &user, vec![morning.clone(), earlier.clone()]).await;
    assert_eq!(statuses(&body), vec!["created", "created"]);

    let tap = Utc::now().to_rfc3339();
    let mut closed = morning.clone();
    closed["client_timestamp"] = json!(tap);
    closed["data"]["clock_out_at"] = json!(tap);
    closed["data"]["clock_out_location"] = json!({"latitude": SITE.0, "longitude": SITE.1});
    let mut next = open_shift(facility, 0);
    next["client_timestamp"] = json!(tap);
    next["data"]["clock_in_at"] = json!(tap);
    let mut edited = earlier.clone();
    edited["client_timestamp"] = json!(tap);
    edited["data"]["notes"] = json!("corrected");
    // An update before the creation sharing its stamp, and one after it.
    let (status, body) = push(&app, &user, vec![closed, next, edited]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        statuses(&body),
        vec!["updated", "created", "updated"],
        "{body}"
    );
    assert_eq!(body["results"][2]["record"]["notes"], "corrected");
    assert_eq!(app.attendance_rows().await, 3);
    assert_eq!(stored_for(&app, &user, true).await, 1);
    // Each stored record keeps the timestamp it was created under: sending a creation again
    // under another id is still recognised.
    let mut again = earlier;
    again["id"] = json!(Uuid::new_v4());
    let (_, body) = push(&app, &user, vec![again]).await;
    assert_eq!(statuses(&body), vec!["duplicate"]);
}

#[tokio::test]
async fn client_wins_replaces_a_shift_opened_earlier_in_the_same_batch() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let first = open_shift(facility, 300);
    let mut second = open_shift(facility, 60);
    second["conflict_strategy"] = json!("client_wins");
    let (status, body) = push(&app, &user, vec![first.clone(), second.clone()]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(statuses(&body), vec!["created", "created"]);
    assert_eq!(body["results"][0]["record"]["status"], "incomplete");
    assert_eq!(body["results"][1]["record"]["status"], "open");
    let (_, again) = push(&app, &user, vec![first, second]).await;
    assert_eq!(statuses(&again), vec!["duplicate", "duplicate"]);
    assert_eq!(stored_for(&app, &user, true).await, 1);
    assert_eq!(app.attendance_rows().await, 2);
}

/// Creates a record at version 1 and moves the server to version 2 (another device's edit).
async fn diverged(app: &TestApp, user: &TestUser, facility: Uuid) -> Value {
    let record = shift(Uuid::new_v4(), facility, 1, 6, 1);
    push(app, user, vec![record.clone()]).await;
    let mut server_edit = record.clone();
    server_edit["data"]["notes"] = json!("edited on device B");
    server_edit["client_timestamp"] = json!((Utc::now() - Duration::minutes(5)).to_rfc3339());
    let (_, body) = push_from(app, user, "device-B", vec![server_edit]).await;
    assert_eq!(statuses(&body), vec!["updated"]);
    assert_eq!(body["results"][0]["server_version"], 2);
    let mut stale = record;
    stale["data"]["notes"] = json!("edited on device A");
    stale["client_timestamp"] = json!((Utc::now() - Duration::minutes(1)).to_rfc3339());
    stale
}

async fn notes_and_version(app: &TestApp) -> (String, i32) {
    sqlx::query_as("SELECT notes, sync_version FROM attendance")
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn server_wins_keeps_and_returns_the_servers_record() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let stale = diverged(&app, &user, facility).await;
    let (_, body) = push(&app, &user, vec![stale]).await;
    assert_eq!(statuses(&body), vec!["conflict"]);
    assert_eq!(body["results"][0]["resolution"], "server_wins");
    assert_eq!(body["results"][0]["record"]["notes"], "edited on device B");
    assert_eq!(
        notes_and_version(&app).await,
        ("edited on device B".into(), 2)
    );
}

#[tokio::test]
async fn client_wins_applies_the_client_and_bumps_the_version() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let mut stale = diverged(&app, &user, facility).await;
    stale["conflict_strategy"] = json!("client_wins");
    let (_, body) = push(&app, &user, vec![stale.clone()]).await;
    assert_eq!(statuses(&body), vec!["conflict"]);
    assert_eq!(body["results"][0]["resolution"], "client_wins");
    assert_eq!(body["results"][0]["server_version"], 3);
    assert_eq!(
        notes_and_version(&app).await,
        ("edited on device A".into(), 3)
    );
    // Sending it again is now a duplicate.
    let (_, body) = push(&app, &user, vec![stale]).await;
    assert_eq!(statuses(&body), vec!["duplicate"]);
}

#[tokio::test]
async fn batches_sent_again_after_the_record_moved_on_are_duplicates_and_undo_nothing() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    // A shift opened offline, then two notes added to it: three batches, whose answers the
    // phone never got.
    let mut opened = open_shift(facility, 30);
    opened["conflict_strategy"] = json!("client_wins");
    let mut batches = vec![opened.clone()];
    let (_, body) = push(&app, &user, vec![opened.clone()]).await;
    assert_eq!(statuses(&body), ["created"], "{body}");
    for (version, (note, minutes_ago)) in [("on the way", 20), ("generator broke", 10)]
        .into_iter()
        .enumerate()
    {
        let mut noted = opened.clone();
        noted["sync_version"] = json!(version + 1);
        noted["data"]["notes"] = json!(note);
        noted["client_timestamp"] =
            json!((Utc::now() - Duration::minutes(minutes_ago)).to_rfc3339());
        let (_, body) = push(&app, &user, vec![noted.clone()]).await;
        assert_eq!(statuses(&body), ["updated"], "{body}");
        batches.push(noted);
    }
    // The worker clocks out online meanwhile.
    let closed = clock_out_online(&app, &user).await;
    // The phone's queue sends the batches again, in order, whatever strategy they carry.
    for strategy in ["client_wins", "manual", "server_wins"] {
        for batch in &batches {
            let mut again = batch.clone();
            again["conflict_strategy"] = json!(strategy);
            let (_, body) = push(&app, &user, vec![again]).await;
            assert_eq!(statuses(&body), ["duplicate"], "{strategy}: {body}");
            assert_eq!(body["results"][0]["record"]["status"], "closed", "{body}");
        }
    }
    let (_, stored) = stored_record(&app, &user, &closed).await;
    assert_eq!(stored["status"], "closed", "{stored}");
    assert_eq!(stored["clock_out_at"], closed["clock_out_at"]);
    assert_eq!(stored["notes"], "generator broke");
    assert_eq!(stored["sync_version"], closed["sync_version"]);
    let (_, queue) = send(
        app.get("/api/sync/conflicts")
            .bearer_auth(&app.admin().await.token),
    )
    .await;
    assert_eq!(queue["total"], 0, "{queue}");
    // A change the phone made after those it sent, on the old version, is a conflict settled by
    // its strategy; so is one that reuses a sent change's client timestamp with other content.
    let mut later = batches[2].clone();
    later["data"]["notes"] = json!("left early");
    let (_, body) = push(&app, &user, vec![later.clone()]).await;
    assert_eq!(statuses(&body), ["conflict"], "{body}");
    assert_eq!(body["results"][0]["resolution"], "client_wins");
    later["client_timestamp"] = json!((Utc::now() - Duration::minutes(5)).to_rfc3339());
    later["data"]["notes"] = json!("left early, again");
    let (_, body) = push(&app, &user, vec![later]).await;
    assert_eq!(statuses(&body), ["conflict"], "{body}");
    assert_eq!(notes_and_version(&app).await.0, "left early, again");
}

#[tokio::test]
async fn an_edit_on_the_version_a_conflict_answer_gave_never_brings_back_a_deleted_record() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let record = shift(Uuid::new_v4(), facility, 1, 6, 1);
    let (_, body) = push(&app, &user, vec![record.clone()]).await;
    assert_eq!(statuses(&body), ["created"], "{body}");
    // A live record's answer has no deletion time at all (not even a null).
    let created = body["results"][0]["record"].as_object().unwrap();
    assert!(!created.contains_key("deleted_at"), "{body}");
    // The tablet deletes it.
    let delete = deletion(&record["id"], 20);
    let (_, body) = push_from(&app, &user, "device-B", vec![delete]).await;
    assert_eq!(statuses(&body), ["deleted"], "{body}");
    assert!(
        body["results"][0]["record"]["deleted_at"].is_string(),
        "{body}"
    );
    // The phone, not having pulled the deletion, edits it: a conflict the server's copy wins,
    // and the copy it answers with says it is a deletion, which the phone applies.
    let mut edit = record.clone();
    edit["data"]["notes"] = json!("edited on the phone");
    edit["client_timestamp"] = json!((Utc::now() - Duration::minutes(10)).to_rfc3339());
    let (_, body) = push(&app, &user, vec![edit.clone()]).await;
    assert_eq!(statuses(&body), ["conflict"], "{body}");
    assert_eq!(body["results"][0]["server_version"], 2);
    assert_eq!(body["results"][0]["resolution"], "server_wins");
    assert!(
        body["results"][0]["record"]["deleted_at"].is_string(),
        "{body}"
    );
    // Its next edit, on the version that answer gave it, does not undo the deletion either.
    edit["sync_version"] = json!(2);
    edit["data"]["notes"] = json!("edited again");
    edit["client_timestamp"] = json!((Utc::now() - Duration::minutes(5)).to_rfc3339());
    let (_, body) = push(&app, &user, vec![edit]).await;
    assert_eq!(statuses(&body), ["conflict"], "{body}");
    let (status, _) = stored_record(&app, &user, &record).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_deletion_sent_again_after_another_device_restored_the_record_undoes_nothing() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let record = shift(Uuid::new_v4(), facility, 1, 6, 1);
    let (_, body) = push(&app, &user, vec![record.clone()]).await;
    assert_eq!(statuses(&body), ["created"], "{body}");
    // The phone deletes it; the answer is lost.
    let mut delete = deletion(&record["id"], 10);
    delete["conflict_strategy"] = json!("client_wins");
    let (_, body) = push(&app, &user, vec![delete.clone()]).await;
    assert_eq!(statuses(&body), ["deleted"], "{body}");
    // The tablet, not having pulled the deletion, keeps its edit of it.
    let mut kept = record.clone();
    kept["data"]["notes"] = json!("kept on the tablet");
    kept["client_timestamp"] = json!((Utc::now() - Duration::minutes(5)).to_rfc3339());
    kept["conflict_strategy"] = json!("client_wins");
    let (_, body) = push_from(&app, &user, "device-B", vec![kept]).await;
    assert_eq!(statuses(&body), ["conflict"], "{body}");
    assert_eq!(body["results"][0]["resolution"], "client_wins");
    // The phone sends its deletion again.
    let (_, body) = push(&app, &user, vec![delete]).await;
    assert_eq!(statuses(&body), ["duplicate"], "{body}");
    let (status, stored) = stored_record(&app, &user, &record).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(stored["notes"], "kept on the tablet");
}

#[tokio::test]
async fn a_push_cut_by_the_request_time_limit_stops_waiting_in_the_database_too() {
    let app = TestApp::spawn_timing_out_after_a_second().await;
    let (user, facility) = setup(&app).await;
    let record = shift(Uuid::new_v4(), facility, 1, 6, 1);
    let (_, body) = push(&app, &user, vec![record.clone()]).await;
    assert_eq!(statuses(&body), ["created"], "{body}");
    // Another push of the user's holds their lock (here, a session of the test's own) for
    // longer than a request may take.
    let mut held = app.db.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(user.id.to_string())
        .execute(&mut *held)
        .await
        .unwrap();
    let mut edit = record;
    edit["data"]["notes"] = json!("edited");
    edit["client_timestamp"] = json!(Utc::now().to_rfc3339());
    let (status, body) = push(&app, &user, vec![edit.clone()]).await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    app.until_none_running(
        "pg_advisory_xact_lock",
        "the push stops waiting for the lock while it is still held",
    )
    .await;
    held.rollback().await.unwrap();
    // Its connection came back to the pool out of its transaction: not holding the lock, nor
    // left aborted for the next request to fail on.
    app.until_no_session_in_a_transaction().await;
    assert_eq!(notes_and_version(&app).await, ("offline".into(), 1));
    // The same push, sent again, goes through.
    let (status, body) = push(&app, &user, vec![edit]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(statuses(&body), ["updated"], "{body}");
    assert_eq!(notes_and_version(&app).await, ("edited".into(), 2));
}

#[tokio::test]
async fn manual_conflicts_queue_once_and_resolve_both_ways_visible_to_the_next_pull() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (user, facility) = setup(&app).await;
    for keep in ["client", "server"] {
        sqlx::query("DELETE FROM attendance")
            .execute(&app.db)
            .await
            .unwrap();
        let mut stale = diverged(&app, &user, facility).await;
        stale["conflict_strategy"] = json!("manual");
        for _ in 0..2 {
            let (_, body) = push(&app, &user, vec![stale.clone()]).await;
            assert_eq!(statuses(&body), vec!["conflict"]);
            assert_eq!(body["results"][0]["resolution"], "manual");
        }
        assert_eq!(
            notes_and_version(&app).await.0,
            "edited on device B",
            "kept as the server's until resolved"
        );
        let (_, queue) = send(app.get("/api/sync/conflicts").bearer_auth(&admin.token)).await;
        assert_eq!(queue["total"], 1, "queued once despite the retry: {queue}");
        let conflict = &queue["data"][0];
        assert_eq!(conflict["record_id"], stale["id"]);

        let (_, before) = send(app.get("/api/sync/pull").bearer_auth(&user.token)).await;
        let cursor = before["cursor"].as_str().unwrap().to_string();
        let (status, resolved) = send(
            app.post(&format!(
                "/api/sync/conflicts/{}/resolve",
                conflict["id"].as_str().unwrap()
            ))
            .bearer_auth(&admin.token)
            .json(&json!({"keep": keep})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{resolved}");
        assert_eq!(resolved["conflict"]["resolution"], keep);
        // The device's copy is a new version; the server's keeps its own (no device edited it).
        let (expected, version) = if keep == "client" {
            ("edited on device A", 3)
        } else {
            ("edited on device B", 2)
        };
        assert_eq!(notes_and_version(&app).await, (expected.into(), version));

        let (_, after) = pull_at(&app, &user.token, &cursor).await;
        let updated = after["changes"]["attendance"]["updated"]
            .as_array()
            .unwrap();
        assert_eq!(updated.len(), 1, "{after}");
        assert_eq!(updated[0]["notes"], expected);

        // Sent again (its answer lost), the same choice is answered as it was settled and
        // written once; the other choice is refused.
        let resolve_again = |keep: &str| {
            app.post(&format!(
                "/api/sync/conflicts/{}/resolve",
                conflict["id"].as_str().unwrap()
            ))
            .bearer_auth(&admin.token)
            .json(&json!({"keep": keep}))
        };
        let (status, again) = send(resolve_again(keep)).await;
        assert_eq!(status, StatusCode::OK, "{again}");
        assert_eq!(again["conflict"], resolved["conflict"]);
        assert_eq!(again["record"]["notes"], expected);
        assert_eq!(again["record"]["sync_version"], version);
        assert_eq!(notes_and_version(&app).await, (expected.into(), version));
        let other = if keep == "client" { "server" } else { "client" };
        let (status, body) = send(resolve_again(other)).await;
        assert_error(status, &body, StatusCode::CONFLICT, "conflict");
        assert_eq!(notes_and_version(&app).await, (expected.into(), version));
    }
    let resolutions = app
        .actions()
        .await
        .iter()
        .filter(|a| *a == "sync.conflict_resolve")
        .count();
    assert_eq!(
        resolutions, 2,
        "one audit row per conflict, whatever the retries"
    );
    let (status, _) = send(app.get("/api/sync/conflicts").bearer_auth(&user.token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn keeping_the_devices_copy_never_sets_back_a_record_that_moved_on() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (user, facility) = setup(&app).await;
    let mut stale = diverged(&app, &user, facility).await;
    stale["conflict_strategy"] = json!("manual");
    let (_, body) = push(&app, &user, vec![stale.clone()]).await;
    assert_eq!(statuses(&body), vec!["conflict"]);
    let (_, queue) = send(app.get("/api/sync/conflicts").bearer_auth(&admin.token)).await;
    let resolve = format!(
        "/api/sync/conflicts/{}/resolve",
        queue["data"][0]["id"].as_str().unwrap()
    );
    // The record changes on the server after the conflict was queued.
    sqlx::query(
        "UPDATE attendance SET notes = 'changed later', sync_version = sync_version + 1
         WHERE id = $1",
    )
    .bind(stale["id"].as_str().unwrap().parse::<Uuid>().unwrap())
    .execute(&app.db)
    .await
    .unwrap();
    let (status, body) = send(
        app.post(&resolve)
            .bearer_auth(&admin.token)
            .json(&json!({"keep": "client"})),
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(notes_and_version(&app).await, ("changed later".into(), 3));
    let (status, body) = send(
        app.post(&resolve)
            .bearer_auth(&admin.token)
            .json(&json!({"keep": "server"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(notes_and_version(&app).await, ("changed later".into(), 3));
}

#[tokio::test]
async fn deletes_are_tombstones_that_pull_as_ids() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let record = shift(Uuid::new_v4(), facility, 1, 6, 1);
    push(&app, &user, vec![record.clone()]).await;
    let (_, first) = send(app.get("/api/sync/pull").bearer_auth(&user.token)).await;
    assert_eq!(
        first["changes"]["attendance"]["created"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let mut delete = deletion(&record["id"], 0);
    let (_, body) = push(&app, &user, vec![delete.clone()]).await;
    assert_eq!(statuses(&body), vec!["deleted"]);
    delete["client_timestamp"] = json!(Utc::now().to_rfc3339());
    let (_, body) = push(&app, &user, vec![delete]).await;
    assert_eq!(statuses(&body), vec!["duplicate"]);
    let next = pull_from(&app, &user.token, Some(&first)).await;
    assert_eq!(
        next["changes"]["attendance"]["deleted"],
        json!([record["id"]])
    );
    let (status, _) = stored_record(&app, &user, &record).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_shift_begun_after_its_facility_closed_is_refused_and_one_begun_before_is_kept() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (user, facility) = setup(&app).await;
    // Offline, the phone keeps yesterday's shift and an open one begun an hour ago; the admin
    // then closes the facility, and later the phone begins another shift there.
    let yesterday = shift(Uuid::new_v4(), facility, 1, 6, 1);
    let mut morning = open_shift(facility, 60);
    // Another phone, its clock two minutes ahead, pushed a shift begun "after" the closure
    // before it happened: the server took it, and its clock-out is taken too.
    let colleague = app.quick_user("focal", None, facility).await;
    let mut ahead = open_shift(facility, -2);
    let (_, body) = push(&app, &colleague, vec![ahead.clone()]).await;
    assert_eq!(statuses(&body), ["created"], "{body}");
    let (status, _) = send(
        app.delete(&format!("/api/facilities/{facility}"))
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let clock_out = Utc::now().to_rfc3339();
    morning["client_timestamp"] = json!(clock_out);
    morning["data"]["clock_out_at"] = json!(clock_out);
    morning["data"]["clock_out_location"] = json!({"latitude": SITE.0, "longitude": SITE.1});
    let after = open_shift(facility, 0);

    let (status, body) = push(&app, &user, vec![yesterday, morning, after]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        statuses(&body),
        ["created", "created", "rejected"],
        "{body}"
    );
    assert_eq!(body["results"][1]["record"]["status"], "closed");
    let error = &body["results"][2]["error"];
    assert_eq!(error["code"], "validation_failed", "{body}");
    assert!(
        error["message"].as_str().unwrap().contains("inactive"),
        "{body}"
    );
    let out = (Utc::now() + Duration::minutes(3)).to_rfc3339();
    ahead["client_timestamp"] = json!(out);
    ahead["data"]["clock_out_at"] = json!(out);
    ahead["data"]["clock_out_location"] = json!({"latitude": SITE.0, "longitude": SITE.1});
    let (_, body) = push(&app, &colleague, vec![ahead]).await;
    assert_eq!(statuses(&body), ["updated"], "{body}");
    assert_eq!(body["results"][0]["record"]["status"], "closed");
    assert_eq!(app.attendance_rows().await, 3);

    // Open again, it takes shifts as before.
    let (status, body) = send(
        app.patch(&format!("/api/facilities/{facility}"))
            .bearer_auth(&admin.token)
            .json(&json!({"status": "active"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = push(&app, &user, vec![open_shift(facility, 0)]).await;
    assert_eq!(statuses(&body), ["created"], "{body}");

    // Put under maintenance, then closed for good: it has been closed since the first, and a
    // shift a phone began in between is refused when it syncs after the second.
    let set = |status: &'static str| {
        send(
            app.patch(&format!("/api/facilities/{facility}"))
                .bearer_auth(&admin.token)
                .json(&json!({ "status": status })),
        )
    };
    let (status, body) = set("maintenance").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let between = open_shift(facility, 0);
    let (status, body) = set("inactive").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = push(&app, &colleague, vec![between]).await;
    assert_eq!(statuses(&body), ["rejected"], "{body}");
    let message = body["results"][0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("inactive, closed since"), "{message}");
}

#[tokio::test]
async fn an_enforced_geofence_refuses_a_clock_in_outside_it_as_online_and_nothing_else() {
    let app = TestApp::spawn_with(|env| {
        env.insert("GEOFENCE_ENFORCE".into(), "true".into());
    })
    .await;
    let admin = app.admin().await;
    let (user, facility) = setup(&app).await;
    let metres_north = |m: f64| json!({"latitude": SITE.0 + m / 111_195.0, "longitude": SITE.1});
    let mut far = shift(Uuid::new_v4(), facility, 3, 6, 1);
    far["data"]["clock_in_location"] = metres_north(500.0);
    // Clocked in at the facility, clocked out from the car park 300 m away: kept and flagged,
    // as an online clock-out from there would be.
    let mut car_park = shift(Uuid::new_v4(), facility, 2, 6, 1);
    car_park["data"]["clock_out_location"] = metres_north(300.0);
    let mut edge = shift(Uuid::new_v4(), facility, 1, 6, 1);
    edge["data"]["clock_in_location"] = metres_north(150.0);
    let (_, body) = push(&app, &user, vec![far, car_park, edge.clone()]).await;
    assert_eq!(
        statuses(&body),
        ["rejected", "created", "created"],
        "{body}"
    );
    assert_eq!(body["results"][0]["error"]["code"], "outside_geofence");
    assert_eq!(body["results"][1]["record"]["outside_geofence"], true);
    assert_eq!(app.attendance_rows().await, 2);

    // The fence narrows after the shift 150 m out was stored: its edit is still taken.
    let (status, body) = send(
        app.patch(&format!("/api/facilities/{facility}"))
            .bearer_auth(&admin.token)
            .json(&json!({"geofence_radius_m": 100})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    edge["sync_version"] = json!(2);
    edge["data"]["notes"] = json!("left early");
    let (_, body) = push(&app, &user, vec![edge.clone()]).await;
    assert_eq!(statuses(&body), ["updated"], "{body}");
    assert_eq!(body["results"][0]["record"]["notes"], "left early");
    // Moving its clock-in is a clock-in the fence now refuses.
    edge["sync_version"] = json!(3);
    edge["data"]["clock_in_location"] = metres_north(140.0);
    let (_, body) = push(&app, &user, vec![edge]).await;
    assert_eq!(statuses(&body), ["rejected"], "{body}");
}

#[tokio::test]
async fn an_open_record_while_another_is_open_is_a_conflict() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let online = clock_in_online(&app, &user).await;
    let (_, body) = push(&app, &user, vec![open_shift(facility, 30)]).await;
    assert_eq!(statuses(&body), vec!["conflict"]);
    assert_eq!(body["results"][0]["record"]["id"], online["id"]);
    // The server holds no version of the record sent: the one answered with is another.
    assert_eq!(body["results"][0]["server_version"], Value::Null, "{body}");
    assert_eq!(app.attendance_rows().await, 1);
}

#[tokio::test]
async fn a_new_shift_sent_before_the_clock_out_of_the_open_one_is_created_beside_it() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    for op in ["close", "delete"] {
        let mut earlier = open_shift(facility, 90);
        let (_, body) = push(&app, &user, vec![earlier.clone()]).await;
        assert_eq!(statuses(&body), vec!["created"], "{body}");
        // Offline, the device ends that shift and begins another; it sends the new record first.
        if op == "close" {
            earlier["data"]["clock_out_at"] =
                json!((Utc::now() - Duration::minutes(40)).to_rfc3339());
            earlier["data"]["clock_out_location"] =
                json!({"latitude": SITE.0, "longitude": SITE.1});
        } else {
            earlier["op"] = json!("delete");
        }
        let later = open_shift(facility, 30);
        let (status, body) = push(&app, &user, vec![later.clone(), earlier.clone()]).await;
        assert_eq!(status, StatusCode::OK);
        let second = if op == "close" { "updated" } else { "deleted" };
        assert_eq!(statuses(&body), vec!["created", second], "{op}: {body}");
        assert_eq!(body["results"][0]["record"]["status"], "open", "{body}");
        let (_, active) = send(app.get("/api/attendance/active").bearer_auth(&user.token)).await;
        assert_eq!(active["attendance"]["id"], later["id"], "{op}");
        // Closed for the next round.
        clock_out_online(&app, &user).await;
    }
}

#[tokio::test]
async fn a_new_shift_queued_beside_an_open_one_is_stored_when_the_admin_keeps_it() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (user, facility) = setup(&app).await;
    let (offline, online) = queued_beside_online(&app, &user, facility).await;
    // Sent again (the phone retried): queued once.
    let (_, body) = push(&app, &user, vec![offline.clone()]).await;
    assert_eq!(statuses(&body), vec!["conflict"]);
    assert_eq!(body["results"][0]["resolution"], "manual");
    let (_, queue) = send(app.get("/api/sync/conflicts").bearer_auth(&admin.token)).await;
    assert_eq!(queue["total"], 1, "{queue}");
    let (status, resolved) = resolve_oldest(&app, &admin, "client").await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(resolved["record"]["id"], offline["id"]);
    assert_eq!(resolved["record"]["status"], "open");
    assert_eq!(resolved["record"]["device_id"], "device-A");
    // The online shift it replaced is closed as incomplete, as client_wins would have.
    let (_, replaced) = stored_record(&app, &user, &online).await;
    assert_eq!(replaced["status"], "incomplete");
    assert_eq!(app.attendance_rows().await, 2);
    // The phone's next push of the same record is a duplicate.
    let (_, body) = push(&app, &user, vec![offline]).await;
    assert_eq!(statuses(&body), vec!["duplicate"]);
}

#[tokio::test]
async fn a_shift_queued_beside_one_clocked_out_since_is_stored_when_the_admin_keeps_it() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (user, facility) = setup(&app).await;
    let (offline, online, closed) = queued_beside_one_clocked_out(&app, &user, facility).await;
    let (status, resolved) = resolve_oldest(&app, &admin, "client").await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(resolved["record"]["id"], offline["id"]);
    assert_eq!(resolved["record"]["status"], "open");
    // The clock-out stands: the shift is not set back to incomplete.
    let (_, kept) = stored_record(&app, &user, &online).await;
    assert_eq!(kept["status"], "closed");
    assert_eq!(kept["clock_out_at"], closed["clock_out_at"]);
    let (_, active) = send(app.get("/api/attendance/active").bearer_auth(&user.token)).await;
    assert_eq!(active["attendance"]["id"], offline["id"]);
}

#[tokio::test]
async fn keeping_a_queued_shift_the_device_has_since_stored_under_another_id_is_a_duplicate() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (user, facility) = setup(&app).await;
    let (offline, ..) = queued_beside_one_clocked_out(&app, &user, facility).await;
    // The phone, reinstalled, sends the same change under a new id, then clocks it out.
    let mut again = offline.clone();
    again["id"] = json!(Uuid::new_v4());
    again["conflict_strategy"] = Value::Null;
    let (_, body) = push(&app, &user, vec![again.clone()]).await;
    assert_eq!(statuses(&body), ["created"], "{body}");
    let now = Utc::now().to_rfc3339();
    again["data"]["clock_out_at"] = json!(now);
    again["data"]["clock_out_location"] = json!({"latitude": SITE.0, "longitude": SITE.1});
    let (_, body) = push(&app, &user, vec![again]).await;
    assert_eq!(statuses(&body), ["updated"], "{body}");
    // Keeping the queued copy would store the same change twice.
    let (status, body) = resolve_oldest(&app, &admin, "client").await;
    assert_error(status, &body, StatusCode::CONFLICT, "duplicate");
    assert_eq!(app.attendance_rows().await, 2);
}

#[tokio::test]
async fn a_queued_shift_its_device_deleted_leaves_the_queue_and_cannot_be_kept() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (user, facility) = setup(&app).await;
    let (offline, online) = queued_beside_online(&app, &user, facility).await;
    let (_, queue) = send(app.get("/api/sync/conflicts").bearer_auth(&admin.token)).await;
    let conflict = queue["data"][0]["id"].as_str().unwrap().to_string();
    // The user discards the shift on the phone.
    let delete = deletion(&offline["id"], 0);
    let (_, body) = send(
        app.post("/api/sync/push")
            .bearer_auth(&user.token)
            .header("User-Agent", "FieldApp/2.1 (Android 13)")
            .json(&json!({"device_id": "device-A", "records": [delete]})),
    )
    .await;
    assert_eq!(statuses(&body), vec!["deleted"]);
    let (_, queue) = send(app.get("/api/sync/conflicts").bearer_auth(&admin.token)).await;
    assert_eq!(queue["total"], 0, "withdrawn from the queue: {queue}");
    let trail = resolutions_of(&app, &admin, &conflict).await;
    assert_eq!(trail["total"], 1, "{trail}");
    assert_eq!(trail["data"][0]["actor_id"], json!(user.id));
    // From where the push came, as every resolution is.
    assert_eq!(trail["data"][0]["ip"], "127.0.0.1");
    assert_eq!(trail["data"][0]["user_agent"], "FieldApp/2.1 (Android 13)");
    let (status, body) = send(
        app.post(&format!("/api/sync/conflicts/{conflict}/resolve"))
            .bearer_auth(&admin.token)
            .json(&json!({"keep": "client"})),
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    // The online shift keeps its hours; the deleted one never comes back.
    let (_, kept) = stored_record(&app, &user, &online).await;
    assert_eq!(kept["status"], "open");
    assert_eq!(app.attendance_rows().await, 1);
}

#[tokio::test]
async fn two_admins_resolving_one_conflict_at_once_settle_it_once() {
    let app = TestApp::spawn().await;
    let first = app.admin().await;
    let second = app.user("admin", None).await;
    let (user, facility) = setup(&app).await;
    let (offline, online) = queued_beside_online(&app, &user, facility).await;
    let (_, queue) = send(app.get("/api/sync/conflicts").bearer_auth(&first.token)).await;
    let conflict = queue["data"][0]["id"].as_str().unwrap().to_string();
    // Both answers are let through at once: each waits for the conflict.
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM sync_conflicts WHERE id = $1::uuid FOR UPDATE")
        .bind(&conflict)
        .execute(&mut *holder)
        .await
        .unwrap();
    let resolve = |admin: &TestUser, keep: &str, agent: &str| {
        send(
            app.post(&format!("/api/sync/conflicts/{conflict}/resolve"))
                .bearer_auth(&admin.token)
                .header("User-Agent", agent)
                .json(&json!({ "keep": keep })),
        )
    };
    let release = async {
        app.until_waiting_on_locks(2, "both answers wait on the conflict")
            .await;
        holder.commit().await.unwrap();
    };
    let ((client_status, _), (server_status, _), ()) = tokio::join!(
        resolve(&first, "client", "console-first"),
        resolve(&second, "server", "console-second"),
        release
    );
    let (winner, keep, agent) = match (client_status, server_status) {
        (StatusCode::OK, StatusCode::CONFLICT) => (&first, "client", "console-first"),
        (StatusCode::CONFLICT, StatusCode::OK) => (&second, "server", "console-second"),
        other => panic!("one answer settles it, the other is refused: {other:?}"),
    };
    let (_, settled) = send(
        app.get("/api/sync/conflicts?status=resolved")
            .bearer_auth(&first.token),
    )
    .await;
    assert_eq!(settled["total"], 1, "{settled}");
    assert_eq!(settled["data"][0]["resolution"], keep);
    assert_eq!(settled["data"][0]["resolved_by"], json!(winner.id));
    // One resolution in the trail, the winner's, from where it came.
    let trail = resolutions_of(&app, &first, &conflict).await;
    assert_eq!(trail["total"], 1, "{trail}");
    assert_eq!(trail["data"][0]["actor_id"], json!(winner.id));
    assert_eq!(trail["data"][0]["ip"], "127.0.0.1");
    assert_eq!(trail["data"][0]["user_agent"], agent);
    // The records are as the winner's answer left them.
    let (_, kept) = stored_record(&app, &user, &online).await;
    let (queued, _) = stored_record(&app, &user, &offline).await;
    if keep == "client" {
        assert_eq!(kept["status"], "incomplete");
        assert_eq!(queued, StatusCode::OK);
    } else {
        assert_eq!(kept["status"], "open");
        assert_eq!(queued, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn a_resolve_meeting_a_push_that_withdraws_the_conflict_waits_for_it_rather_than_deadlock() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (user, facility) = setup(&app).await;
    let (_, online) = queued_beside_online(&app, &user, facility).await;
    let (_, queue) = send(app.get("/api/sync/conflicts").bearer_auth(&admin.token)).await;
    let conflict = queue["data"][0]["id"].as_str().unwrap().to_string();
    // A push of the user's, as the service makes one: the user's sync lock, then the open shift.
    let mut pushing = app.db.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(user.id.to_string())
        .execute(&mut *pushing)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM attendance WHERE id = $1::uuid FOR UPDATE")
        .bind(online["id"].as_str().unwrap())
        .execute(&mut *pushing)
        .await
        .unwrap();
    let resolve = send(
        app.post(&format!("/api/sync/conflicts/{conflict}/resolve"))
            .bearer_auth(&admin.token)
            .json(&json!({ "keep": "client" })),
    );
    // Then it withdraws the conflict (its device deleted the queued copy), and commits.
    let withdraw = async {
        app.until_waiting_on_locks(1, "the resolve waits").await;
        sqlx::query("UPDATE sync_conflicts SET status = status WHERE id = $1::uuid")
            .bind(&conflict)
            .execute(&mut *pushing)
            .await
            .unwrap();
        pushing.commit().await.unwrap();
    };
    let ((status, body), ()) = tokio::join!(resolve, withdraw);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["conflict"]["resolution"], "client", "{body}");
}

#[tokio::test]
async fn a_full_conflict_queue_rejects_the_next_manual_conflict_until_it_is_worked_through() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    clock_in_online(&app, &user).await;
    // 199 of the user's conflicts already wait for an admin.
    sqlx::query(
        "INSERT INTO sync_conflicts (record_id, user_id, client_version, server_version, client_data, server_data)
         SELECT gen_random_uuid(), $1, 1, 1, '{}', '{}' FROM generate_series(1, 199)",
    )
    .bind(user.id)
    .execute(&app.db)
    .await
    .unwrap();
    let manual = |minutes_ago| {
        let mut shift = open_shift(facility, minutes_ago);
        shift["conflict_strategy"] = json!("manual");
        shift
    };
    let (first, second) = (manual(30), manual(20));
    let (_, body) = push(&app, &user, vec![first.clone(), second.clone()]).await;
    assert_eq!(statuses(&body), vec!["conflict", "rejected"], "{body}");
    assert_eq!(body["results"][1]["error"]["code"], "conflict_queue_full");
    // The one queued, sent again, is still answered as queued; the other waits on the device.
    let (_, body) = push(&app, &user, vec![first.clone(), second.clone()]).await;
    assert_eq!(statuses(&body), vec!["conflict", "rejected"], "{body}");
    let pending = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM sync_conflicts WHERE status = 'pending' AND user_id = $1",
        )
        .bind(user.id)
        .fetch_one(&app.db)
        .await
        .unwrap()
    };
    assert_eq!(pending().await, 200);
    // Once an admin has worked through some, it is queued.
    sqlx::query("UPDATE sync_conflicts SET status = 'resolved', resolution = 'server' WHERE client_data = '{}'")
        .execute(&app.db)
        .await
        .unwrap();
    let (_, body) = push(&app, &user, vec![second]).await;
    assert_eq!(statuses(&body), vec!["conflict"], "{body}");
    assert_eq!(pending().await, 2);
}

#[tokio::test]
async fn keeping_the_server_copy_of_a_shift_queued_beside_an_open_one_answers_that_one() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (user, facility) = setup(&app).await;
    let (offline, online) = queued_beside_online(&app, &user, facility).await;
    let (_, before) = send(app.get("/api/sync/pull").bearer_auth(&user.token)).await;
    let (status, resolved) = resolve_oldest(&app, &admin, "server").await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    // The server's copy is the online shift, still open, and still on its version: no device
    // edited it.
    assert_eq!(resolved["record"]["id"], online["id"], "{resolved}");
    assert_eq!(resolved["record"]["status"], "open");
    assert_eq!(resolved["record"]["sync_version"], online["sync_version"]);
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM attendance WHERE deleted_at IS NULL")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(live, 1);
    // The phone that queued its own open shift is told it is gone, and no longer keeps it open.
    let (_, after) = pull_at(&app, &user.token, before["cursor"].as_str().unwrap()).await;
    assert_eq!(
        after["changes"]["attendance"]["deleted"],
        json!([offline["id"]]),
        "{after}"
    );
    // The phone holding it clocks it out offline, on the version it has: applied, not lost.
    let now = Utc::now().to_rfc3339();
    let mut out = open_shift(facility, 0);
    out["id"] = online["id"].clone();
    out["sync_version"] = online["sync_version"].clone();
    out["client_timestamp"] = json!(now);
    out["data"]["clock_in_at"] = online["clock_in_at"].clone();
    out["data"]["clock_out_at"] = json!(now);
    out["data"]["clock_out_location"] = json!({"latitude": SITE.0, "longitude": SITE.1});
    let (_, body) = push(&app, &user, vec![out]).await;
    assert_eq!(statuses(&body), ["updated"], "{body}");
}

/// A shift pushed open beside the user's online one and queued for an admin; the online one.
async fn queued_beside_online(app: &TestApp, user: &TestUser, facility: Uuid) -> (Value, Value) {
    let online = clock_in_online(app, user).await;
    let mut offline = open_shift(facility, 30);
    offline["conflict_strategy"] = json!("manual");
    let (_, body) = push(app, user, vec![offline.clone()]).await;
    assert_eq!(statuses(&body), vec!["conflict"]);
    (offline, online)
}

/// A shift pushed open beside the user's online one and queued for an admin, and the online one
/// clocked out before the admin looks: the queued shift, the online one, and its clock-out.
async fn queued_beside_one_clocked_out(
    app: &TestApp,
    user: &TestUser,
    facility: Uuid,
) -> (Value, Value, Value) {
    let (offline, online) = queued_beside_online(app, user, facility).await;
    let closed = clock_out_online(app, user).await;
    (offline, online, closed)
}

/// The audit trail's resolutions of one conflict, as the admin reads them.
async fn resolutions_of(app: &TestApp, admin: &TestUser, conflict: &str) -> Value {
    let (status, trail) = send(
        app.get(&format!(
            "/api/activities?action=sync.conflict_resolve&entity_id={conflict}"
        ))
        .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{trail}");
    trail
}

/// Resolves the oldest pending conflict as the admin, keeping `keep` (`client` or `server`).
async fn resolve_oldest(app: &TestApp, admin: &TestUser, keep: &str) -> (StatusCode, Value) {
    let (_, queue) = send(app.get("/api/sync/conflicts").bearer_auth(&admin.token)).await;
    send(
        app.post(&format!(
            "/api/sync/conflicts/{}/resolve",
            queue["data"][0]["id"].as_str().unwrap()
        ))
        .bearer_auth(&admin.token)
        .json(&json!({ "keep": keep })),
    )
    .await
}

#[tokio::test]
async fn keeping_a_queued_shift_that_has_aged_past_the_maximum_leaves_the_open_one_open() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (user, facility) = setup(&app).await;
    let (offline, online) = queued_beside_online(&app, &user, facility).await;
    // By the time the admin looks, the queued shift began longer ago than the maximum shift.
    sqlx::query(
        "UPDATE sync_conflicts
         SET client_data = jsonb_set(client_data, '{content,clock_in_at}', to_jsonb($1::text))",
    )
    .bind((Utc::now() - Duration::hours(20)).to_rfc3339())
    .execute(&app.db)
    .await
    .unwrap();
    let (status, resolved) = resolve_oldest(&app, &admin, "client").await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(resolved["record"]["id"], offline["id"]);
    assert_eq!(resolved["record"]["status"], "incomplete");
    let (_, current) = stored_record(&app, &user, &online).await;
    assert_eq!(
        current["status"], "open",
        "the user's current shift goes on"
    );
}

#[tokio::test]
async fn keeping_a_queued_shift_the_device_has_stored_and_changed_since_is_refused() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (user, facility) = setup(&app).await;
    let (offline, online) = queued_beside_online(&app, &user, facility).await;
    // The sweep closes the online shift (keeping its version); the device pushes its shift
    // again, now stored, and clocks it out.
    sqlx::query("UPDATE attendance SET status = 'incomplete' WHERE id = $1")
        .bind(online["id"].as_str().unwrap().parse::<Uuid>().unwrap())
        .execute(&app.db)
        .await
        .unwrap();
    let mut again = offline.clone();
    again["conflict_strategy"] = json!("manual");
    let (_, body) = push(&app, &user, vec![again.clone()]).await;
    assert_eq!(statuses(&body), ["created"], "{body}");
    let now = Utc::now().to_rfc3339();
    again["sync_version"] = json!(2);
    again["client_timestamp"] = json!(now);
    again["data"]["clock_out_at"] = json!(now);
    again["data"]["clock_out_location"] = json!({"latitude": SITE.0, "longitude": SITE.1});
    let (_, body) = push(&app, &user, vec![again]).await;
    assert_eq!(statuses(&body), ["updated"], "{body}");

    let (status, body) = resolve_oldest(&app, &admin, "client").await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let closed: String = sqlx::query_scalar("SELECT status FROM attendance WHERE id = $1")
        .bind(offline["id"].as_str().unwrap().parse::<Uuid>().unwrap())
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(closed, "closed", "the device's clock-out stands");
}

#[tokio::test]
async fn a_clock_out_pushed_after_the_sweep_closed_the_shift_is_kept() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    // Clocked in offline 20 hours ago, pushed while still open.
    let mut record = open_shift(facility, 20 * 60);
    let (_, body) = push(&app, &user, vec![record.clone()]).await;
    assert_eq!(statuses(&body), vec!["created"]);
    let id: Uuid = record["id"].as_str().unwrap().parse().unwrap();
    // Stored open (the push came in time), then forgotten: the sweep closes it.
    sqlx::query("UPDATE attendance SET status = 'open' WHERE id = $1")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    let cutoff = Utc::now() - Duration::hours(16);
    field_attendance::db::attendance::close_forgotten(&app.db, None, cutoff)
        .await
        .unwrap();
    // The phone comes back online with the clock-out it took 9 hours after clocking in.
    let clock_in: chrono::DateTime<Utc> = record["data"]["clock_in_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    record["data"]["clock_out_at"] = json!((clock_in + Duration::hours(9)).to_rfc3339());
    record["data"]["clock_out_location"] = json!({"latitude": SITE.0, "longitude": SITE.1});
    let (_, body) = push(&app, &user, vec![record]).await;
    assert_eq!(statuses(&body), vec!["updated"], "{body}");
    assert_eq!(body["results"][0]["record"]["status"], "closed");
    assert_eq!(body["results"][0]["record"]["duration_s"], 9 * 3600);
}

#[tokio::test]
async fn a_note_added_to_a_shift_replaced_by_a_later_one_does_not_reopen_it() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let earlier = open_shift(facility, 240);
    let (_, body) = push(&app, &user, vec![earlier.clone()]).await;
    assert_eq!(statuses(&body), vec!["created"]);
    // Another device opens a later shift, client_wins: the earlier one is closed incomplete.
    let mut later = open_shift(facility, 30);
    later["conflict_strategy"] = json!("client_wins");
    let (_, body) = push_from(&app, &user, "device-B", vec![later.clone()]).await;
    assert_eq!(statuses(&body), vec!["created"], "{body}");
    let (_, replaced) = stored_record(&app, &user, &earlier).await;
    assert_eq!(replaced["status"], "incomplete");
    let audited: Vec<(Option<uuid::Uuid>, String)> = sqlx::query_as(
        "SELECT actor_id, entity_id::text FROM activities WHERE action = 'attendance.auto_close'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        audited,
        vec![(None, earlier["id"].as_str().unwrap().to_string())],
        "the replaced shift's close is in the audit trail"
    );
    // The first phone adds a note to its (still open) copy.
    let mut noted = earlier.clone();
    noted["data"]["notes"] = json!("generator broke");
    let (_, body) = push(&app, &user, vec![noted]).await;
    assert_eq!(statuses(&body), vec!["updated"], "{body}");
    assert_eq!(body["results"][0]["record"]["status"], "incomplete");
    assert_eq!(body["results"][0]["record"]["notes"], "generator broke");
    let (_, later_now) = stored_record(&app, &user, &later).await;
    assert_eq!(later_now["status"], "open", "the later shift stays open");
}

#[tokio::test]
async fn keeping_a_devices_copy_of_a_shift_replaced_since_does_not_reopen_it() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (user, facility) = setup(&app).await;
    let shift = open_shift(facility, 240);
    let (_, body) = push(&app, &user, vec![shift.clone()]).await;
    assert_eq!(statuses(&body), vec!["created"]);
    // Edited from another device (version 2), then a stale edit from the first, left to an admin.
    let mut other = shift.clone();
    other["data"]["notes"] = json!("from the tablet");
    let (_, body) = push_from(&app, &user, "device-B", vec![other]).await;
    assert_eq!(statuses(&body), vec!["updated"], "{body}");
    let mut stale = shift.clone();
    stale["data"]["notes"] = json!("from the phone");
    stale["conflict_strategy"] = json!("manual");
    let (_, body) = push(&app, &user, vec![stale]).await;
    assert_eq!(statuses(&body), vec!["conflict"], "{body}");
    // Meanwhile a later shift replaces it.
    let mut later = open_shift(facility, 30);
    later["conflict_strategy"] = json!("client_wins");
    let (_, body) = push_from(&app, &user, "device-B", vec![later.clone()]).await;
    assert_eq!(statuses(&body), vec!["created"], "{body}");

    let (status, resolved) = resolve_oldest(&app, &admin, "client").await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(resolved["record"]["notes"], "from the phone");
    assert_eq!(resolved["record"]["status"], "incomplete");
    let (_, later_now) = stored_record(&app, &user, &later).await;
    assert_eq!(later_now["status"], "open");
}

async fn push_from(
    app: &TestApp,
    user: &TestUser,
    device: &str,
    records: Vec<Value>,
) -> (StatusCode, Value) {
    send(
        app.post("/api/sync/push")
            .bearer_auth(&user.token)
            .json(&json!({"device_id": device, "records": records})),
    )
    .await
}

async fn stored_for(app: &TestApp, user: &TestUser, open_only: bool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM attendance WHERE user_id = $1 AND (status = 'open' OR NOT $2)",
    )
    .bind(user.id)
    .bind(open_only)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_opening_a_shift_at_the_same_moment_leave_one_open_and_a_conflict() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(SITE.0, SITE.1).await;
    // Repeated, so that the two pushes overlap in every way the scheduler allows.
    for round in 0..10 {
        let user = app.quick_user("focal", None, facility).await;
        let ((s1, phone), (s2, tablet)) = tokio::join!(
            push_from(&app, &user, "phone", vec![open_shift(facility, 30)]),
            push_from(&app, &user, "tablet", vec![open_shift(facility, 20)]),
        );
        assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
        let mut outcomes = [statuses(&phone).remove(0), statuses(&tablet).remove(0)];
        outcomes.sort();
        assert_eq!(
            outcomes,
            ["conflict", "created"],
            "round {round}: {phone} {tablet}"
        );
        assert_eq!(stored_for(&app, &user, true).await, 1, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_batch_sent_twice_at_the_same_moment_is_stored_once() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(SITE.0, SITE.1).await;
    for round in 0..10 {
        let user = app.quick_user("focal", None, facility).await;
        let records: Vec<Value> = (0..20)
            .map(|i| shift(Uuid::new_v4(), facility, i + 1, 6, 1))
            .collect();
        let ((s1, first), (s2, second)) = tokio::join!(
            push(&app, &user, records.clone()),
            push(&app, &user, records.clone()),
        );
        assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
        for (a, b) in statuses(&first).into_iter().zip(statuses(&second)) {
            let mut pair = [a, b];
            pair.sort();
            assert_eq!(
                pair,
                ["created", "duplicate"],
                "round {round}: {first} {second}"
            );
        }
        assert_eq!(stored_for(&app, &user, false).await, 20, "round {round}");
    }
}

#[tokio::test]
async fn the_same_batch_sent_twice_at_once_in_opposite_orders_is_stored_once() {
    // Each push holds the keys it has written until it ends. A row the test holds, uncommitted,
    // under the middle record's id stops the two pushes there: one has written the first half,
    // the other (in reverse) the second. When the test lets go, each needs a key the other
    // holds, and Postgres ends one of them to break the deadlock. That one is decided again.
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let records: Vec<Value> = (0..20)
        .map(|i| shift(Uuid::new_v4(), facility, i + 1, 6, 1))
        .collect();
    let reversed: Vec<Value> = records.iter().rev().cloned().collect();
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO attendance (id, user_id, facility_id, status, clock_in_at,
                                 clock_in_latitude, clock_in_longitude)
         VALUES ($1, $2, $3, 'incomplete', now(), 0, 0)",
    )
    .bind(records[10]["id"].as_str().unwrap().parse::<Uuid>().unwrap())
    .bind(user.id)
    .bind(facility)
    .execute(&mut *holder)
    .await
    .unwrap();
    let let_go = async {
        app.until_waiting_on_rows(2, "both pushes wait on the held row")
            .await;
        holder.rollback().await.unwrap();
    };
    let ((s1, first), (s2, second), ()) = tokio::join!(
        push(&app, &user, records.clone()),
        push(&app, &user, reversed),
        let_go,
    );
    assert_eq!(
        (s1, s2),
        (StatusCode::OK, StatusCode::OK),
        "{first} {second}"
    );
    let mut outcomes = statuses(&first);
    outcomes.extend(statuses(&second));
    outcomes.sort();
    let expected: Vec<String> = ["created"; 20]
        .into_iter()
        .chain(["duplicate"; 20])
        .map(String::from)
        .collect();
    assert_eq!(outcomes, expected);
    assert_eq!(stored_for(&app, &user, false).await, 20);
}

#[tokio::test]
async fn a_locked_push_that_meets_a_write_it_could_not_see_is_decided_again() {
    // A push that deletes goes by the user's lock. Another write of the same user, still
    // uncommitted when the push reads (here the test's own; in life a push of new records,
    // which takes no lock), stores the record the push creates: the push's insert waits on it,
    // then trips the key when it commits. The push is decided again and sees the record (at
    // the same version, so the device's content applies).
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let stored = shift(Uuid::new_v4(), facility, 3, 6, 1);
    let (_, body) = push(&app, &user, vec![stored.clone()]).await;
    assert_eq!(statuses(&body), vec!["created"]);
    let created = shift(Uuid::new_v4(), facility, 2, 6, 1);
    let created_id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let mut other = app.db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO attendance (id, user_id, facility_id, status, clock_in_at, clock_out_at,
                                 clock_in_latitude, clock_in_longitude)
         VALUES ($1, $2, $3, 'closed', now() - interval '30 hours', now() - interval '26 hours',
                 0, 0)",
    )
    .bind(created_id)
    .bind(user.id)
    .bind(facility)
    .execute(&mut *other)
    .await
    .unwrap();
    let commit = async {
        app.until_waiting_on_rows(1, "the push waits on the uncommitted record")
            .await;
        other.commit().await.unwrap();
    };
    let delete = deletion(&stored["id"], 0);
    let ((status, body), ()) = tokio::join!(push(&app, &user, vec![delete, created]), commit);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(statuses(&body), vec!["deleted", "updated"], "{body}");
    assert_eq!(stored_for(&app, &user, false).await, 2);
}

#[tokio::test]
async fn a_cursor_changed_by_its_client_or_postgres_would_not_read_is_refused() {
    use base64::Engine;
    let app = TestApp::spawn().await;
    let (user, _) = setup(&app).await;
    let keys = field_attendance::auth::jwt::JwtKeys::new(&app.config.auth);
    let encode =
        |json: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string());
    let pull = |cursor: String| {
        send(
            app.get(&format!("/api/sync/pull?cursor={cursor}"))
                .bearer_auth(&user.token),
        )
    };
    // A cursor as issued, with its snapshot changed: a base from long ago, that Postgres would
    // read, so that only the signature tells it from one issued.
    let (status, body) = pull(String::new()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let issued = body["cursor"].as_str().unwrap();
    let (_, tag) = issued.rsplit_once('.').unwrap();
    let forged = format!("{}.{tag}", encode(json!({ "b": "3:3:" })));
    let (status, body) = pull(forged).await;
    assert_invalid(status, &body, "cursor");
    assert_eq!(
        body["error"]["details"]["cursor"][0],
        "is not a cursor this service issued"
    );
    // Signed, but not a snapshot Postgres reads: refused, not a server error.
    for bad in [
        "5:3:",
        "3:9:2",
        "3:9:9",
        "3:9:6,4",
        "0:5:",
        "99999999999999999999:99999999999999999999:",
    ] {
        let (status, body) = pull(keys.seal(&encode(json!({ "b": bad })))).await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
    }
    let (status, body) = pull(keys.seal(&encode(json!({ "b": "3:9:4,4,6" })))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A page of 1 to 1,000 records.
    for limit in ["0", "1001"] {
        let (status, body) = send(
            app.get(&format!("/api/sync/pull?limit={limit}"))
                .bearer_auth(&user.token),
        )
        .await;
        assert_invalid(status, &body, "limit");
    }
    let (status, body) = send(
        app.get("/api/sync/pull?limit=many")
            .bearer_auth(&user.token),
    )
    .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn pull_pages_through_everything_the_caller_may_see_and_nothing_else() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(SITE.0, SITE.1).await;
    let supervisor = app.quick_user("supervisor", None, facility).await;
    let worker = app.quick_user("focal", Some(supervisor.id), facility).await;
    let stranger = app.quick_user("focal", None, facility).await;
    push(
        &app,
        &worker,
        (0..7)
            .map(|i| shift(Uuid::new_v4(), facility, i + 1, 6, 1))
            .collect(),
    )
    .await;
    push(
        &app,
        &stranger,
        (0..3)
            .map(|i| shift(Uuid::new_v4(), facility, i + 1, 6, 1))
            .collect(),
    )
    .await;

    let mut cursor = String::new();
    let mut seen = Vec::new();
    let mut facilities = 0;
    let mut pages = 0;
    loop {
        let (status, page) = send(
            app.get(&format!("/api/sync/pull?limit=3&cursor={cursor}"))
                .bearer_auth(&supervisor.token),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        for r in page["changes"]["attendance"]["created"].as_array().unwrap() {
            assert_eq!(r["user_id"], json!(worker.id));
            seen.push(r["id"].as_str().unwrap().to_string());
        }
        facilities += page["changes"]["facilities"]["created"]
            .as_array()
            .unwrap()
            .len();
        cursor = page["cursor"].as_str().unwrap().to_string();
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(seen.len(), 7);
    assert_eq!(facilities, 1);
    assert!(pages >= 3);
    let (_, empty) = pull_at(&app, &supervisor.token, &cursor).await;
    assert_eq!(empty["changes"]["attendance"]["created"], json!([]));
    assert_eq!(empty["has_more"], false);
    let (status, body) = send(
        app.get("/api/sync/pull?cursor=forged")
            .bearer_auth(&supervisor.token),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
}

/// Writers commit interleaved transactions with random delays, one of them held open for a long
/// time, while a reader pulls repeatedly: the reader ends with every committed record exactly
/// once, and nothing from the transaction that rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_never_skip_a_change_when_transactions_commit_out_of_order() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(SITE.0, SITE.1).await;
    let admin = app.admin().await;
    let user = app.quick_user("focal", None, facility).await;
    // The long transaction starts first (it takes the lowest transaction id) and commits last.
    let long_id = Uuid::new_v4();
    let mut long_tx = app.db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO attendance (id, user_id, facility_id, status, clock_in_at, clock_out_at, clock_in_latitude, clock_in_longitude)
         VALUES ($1, $2, $3, 'closed', now() - interval '3 hours', now() - interval '1 hour', -1.9, 30.1)",
    )
    .bind(long_id)
    .bind(user.id)
    .bind(facility)
    .execute(&mut *long_tx)
    .await
    .unwrap();

    // Interleaved writers on the real table.
    let mut handles = Vec::new();
    for w in 0..4u64 {
        let db = app.db.clone();
        let (uid, fid) = (user.id, facility);
        handles.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            for i in 0..10u64 {
                let id = Uuid::new_v4();
                let mut tx = db.begin().await.unwrap();
                sqlx::query(
                    "INSERT INTO attendance (id, user_id, facility_id, status, clock_in_at, clock_out_at, clock_in_latitude, clock_in_longitude)
                     VALUES ($1, $2, $3, 'closed', now() - interval '2 hours', now() - interval '1 hour', -1.9, 30.1)",
                )
                .bind(id)
                .bind(uid)
                .bind(fid)
                .execute(&mut *tx)
                .await
                .unwrap();
                tokio::time::sleep(std::time::Duration::from_millis((w * 7 + i * 13) % 40)).await;
                if i == 5 && w == 0 {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                    committed.push(id);
                }
            }
            committed
        }));
    }

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut cursor = String::new();
    let pull_once = |cursor: String| {
        let request = app
            .get(&format!("/api/sync/pull?limit=7&cursor={cursor}"))
            .bearer_auth(&admin.token);
        async move { send(request).await }
    };
    let mut long_tx = Some(long_tx);
    for round in 0..60 {
        let (status, page) = pull_once(cursor.clone()).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for r in page["changes"]["attendance"]["created"]
            .as_array()
            .unwrap()
            .iter()
            .chain(page["changes"]["attendance"]["updated"].as_array().unwrap())
        {
            *seen
                .entry(r["id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        cursor = page["cursor"].as_str().unwrap().to_string();
        if round == 30
            && let Some(tx) = long_tx.take()
        {
            tx.commit().await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut committed = vec![long_id.to_string()];
    for h in handles {
        committed.extend(h.await.unwrap().into_iter().map(|id| id.to_string()));
    }
    // Drain what is left after every writer is done.
    loop {
        let (_, page) = pull_once(cursor.clone()).await;
        for r in page["changes"]["attendance"]["created"]
            .as_array()
            .unwrap()
            .iter()
            .chain(page["changes"]["attendance"]["updated"].as_array().unwrap())
        {
            *seen
                .entry(r["id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        cursor = page["cursor"].as_str().unwrap().to_string();
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
    }
    committed.sort();
    let mut got: Vec<String> = seen.keys().cloned().collect();
    got.sort();
    assert_eq!(got, committed, "missed or extra records");
    assert!(
        seen.values().all(|&n| n == 1),
        "a record came twice: {seen:?}"
    );
    assert_eq!(committed.len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_devices_push_fifty_records_each_through_pgbouncer() {
    let Some(bouncer) = require_pgbouncer("sync through pgbouncer") else {
        return;
    };
    let app = TestApp::spawn_via_pgbouncer(&bouncer).await;
    let facility = app.facility_at(SITE.0, SITE.1).await;
    let mut devices = Vec::new();
    for _ in 0..100 {
        devices.push(app.quick_user("focal", None, facility).await);
    }
    let pushes = devices.iter().enumerate().map(|(d, user)| {
        let records: Vec<Value> = (0..50)
            .map(|i| {
                shift(
                    Uuid::new_v4(),
                    facility,
                    i / 2 + 1,
                    if i % 2 == 0 { 4 } else { 12 },
                    1,
                )
            })
            .collect();
        let request = app
            .post("/api/sync/push")
            .bearer_auth(&user.token)
            .json(&json!({"device_id": format!("device-{d}"), "records": records}));
        async move { send(request).await }
    });
    let results = futures::future::join_all(pushes).await;
    for (status, body) in &results {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert!(statuses(body).iter().all(|s| s == "created"), "{body}");
    }
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT id) FROM attendance")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (5000, 5000));
}

#[tokio::test]
async fn a_worker_moved_to_another_supervisor_takes_their_records_along_in_both_pulls() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let before = app.user("supervisor", None).await;
    let after = app.user("supervisor", None).await;
    let facility = app.facility_at(SITE.0, SITE.1).await;
    let worker = app.quick_user("focal", Some(before.id), facility).await;
    let day = Utc::now() - Duration::days(3);
    let record = app
        .insert_attendance(
            worker.id,
            facility,
            day,
            Some(day + Duration::hours(8)),
            "closed",
        )
        .await;
    let updated_at = || {
        sqlx::query_scalar::<_, DateTime<Utc>>("SELECT updated_at FROM attendance WHERE id = $1")
            .bind(record)
            .fetch_one(&app.db)
    };
    let stamped = updated_at().await.unwrap();
    let pull = |user: &TestUser, cursor: Option<String>| {
        let path = match cursor {
            Some(c) => format!("/api/sync/pull?cursor={c}"),
            None => "/api/sync/pull".into(),
        };
        send(app.get(&path).bearer_auth(&user.token))
    };
    let ids = |body: &Value, kind: &str| -> Vec<String> {
        body["changes"]["attendance"][kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.get("id").unwrap_or(r).as_str().unwrap().to_string())
            .collect()
    };
    let (_, first_before) = pull(&before, None).await;
    assert_eq!(ids(&first_before, "created"), [record.to_string()]);
    let (_, first_after) = pull(&after, None).await;
    assert!(ids(&first_after, "created").is_empty());
    let (_, melon) = send(
        app.get("/api/sync/watermelon?last_pulled_at=null")
            .bearer_auth(&after.token),
    )
    .await;

    move_under(&app, &admin, worker.id, Some(after.id)).await;

    // The new supervisor's devices get the worker's history as new records; the old one's are
    // told the records are gone. The record itself did not change.
    let cursor = |b: &Value| Some(b["cursor"].as_str().unwrap().to_string());
    let (_, gained) = pull(&after, cursor(&first_after)).await;
    assert_eq!(ids(&gained, "created"), [record.to_string()], "{gained}");
    let (_, lost) = pull(&before, cursor(&first_before)).await;
    assert_eq!(ids(&lost, "deleted"), [record.to_string()], "{lost}");
    assert!(ids(&lost, "created").is_empty() && ids(&lost, "updated").is_empty());
    let (status, melon) = send(
        app.get(&format!(
            "/api/sync/watermelon?last_pulled_at={}",
            melon["timestamp"]
        ))
        .bearer_auth(&after.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{melon}");
    // WatermelonDB creates a record sent as updated that it lacks (see `sync::watermelon`).
    assert_eq!(
        melon["changes"]["attendance"]["updated"][0]["id"],
        json!(record)
    );
    assert_eq!(updated_at().await.unwrap(), stamped);
    // Told once.
    let (_, again) = pull(&before, cursor(&lost)).await;
    assert!(ids(&again, "deleted").is_empty(), "{again}");
    let (_, again) = pull(&after, cursor(&gained)).await;
    assert!(ids(&again, "created").is_empty(), "{again}");
}

#[tokio::test]
async fn a_supervisor_is_told_a_departed_workers_records_in_pages_of_the_limit() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let supervisor = app.user("supervisor", None).await;
    let facility = app.facility_at(SITE.0, SITE.1).await;
    let worker = app.quick_user("focal", Some(supervisor.id), facility).await;
    let mut gone = vec![];
    for _ in 0..5 {
        gone.push(closed_shift(&app, worker.id, facility).await);
    }
    // A device may pick any id, the lowest there is too.
    let nil = uuid::Uuid::nil().to_string();
    sqlx::query("UPDATE attendance SET id = $1::uuid WHERE id = $2::uuid")
        .bind(&nil)
        .bind(&gone[0])
        .execute(&app.db)
        .await
        .unwrap();
    gone[0] = nil;
    gone.sort();
    let first = pull_from(&app, &supervisor.token, None).await;
    assert_eq!(change_ids(&first, "created"), gone);

    move_under(&app, &admin, worker.id, None).await;
    let last = deletions_in_pages_of_two(&app, &supervisor.token, first, &gone).await;
    let again = pull_from(&app, &supervisor.token, Some(&last)).await;
    assert_eq!(
        change_ids(&again, "deleted"),
        Vec::<String>::new(),
        "{again}"
    );
}

/// Pulls after `from` in pages of two until there is no more, each page holding nothing but
/// deletions, and checks that together they told `gone` (sorted) once each; the last page.
async fn deletions_in_pages_of_two(
    app: &TestApp,
    token: &str,
    from: Value,
    gone: &[String],
) -> Value {
    let mut told = vec![];
    let mut page = from;
    loop {
        page = pull_page(app, token, Some(&page), 2).await;
        let deleted = change_ids(&page, "deleted");
        assert!(deleted.len() <= 2, "{page}");
        assert_eq!(change_ids(&page, "created"), Vec::<String>::new());
        assert_eq!(change_ids(&page, "updated"), Vec::<String>::new());
        told.extend(deleted);
        if page["has_more"] == json!(false) {
            break;
        }
        assert!(told.len() <= gone.len(), "{page}");
    }
    assert_eq!(told, gone);
    page
}

/// A record as its user reads it (`GET /api/attendance/{id}`), by a record of a response.
async fn stored_record(app: &TestApp, user: &TestUser, record: &Value) -> (StatusCode, Value) {
    let id = record["id"].as_str().unwrap();
    send(
        app.get(&format!("/api/attendance/{id}"))
            .bearer_auth(&user.token),
    )
    .await
}

/// The ids of one kind of attendance change (`created`, `updated` or `deleted`) in a pull.
fn change_ids(body: &Value, kind: &str) -> Vec<String> {
    let mut ids: Vec<String> = body["changes"]["attendance"][kind]
        .as_array()
        .unwrap_or_else(|| panic!("no {kind} in {body}"))
        .iter()
        .map(|r| r.get("id").unwrap_or(r).as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn pull_from(app: &TestApp, token: &str, cursor: Option<&Value>) -> Value {
    pull_page(app, token, cursor, 200).await
}

/// The answer to a pull from `cursor`, whatever its status.
async fn pull_at(app: &TestApp, token: &str, cursor: &str) -> (StatusCode, Value) {
    send(
        app.get(&format!("/api/sync/pull?cursor={cursor}"))
            .bearer_auth(token),
    )
    .await
}

/// A page of at most `limit` changes after the cursor of a previous answer.
async fn pull_page(app: &TestApp, token: &str, cursor: Option<&Value>, limit: usize) -> Value {
    let path = match cursor {
        Some(body) => format!(
            "/api/sync/pull?limit={limit}&cursor={}",
            body["cursor"].as_str().unwrap()
        ),
        None => format!("/api/sync/pull?limit={limit}"),
    };
    let (status, body) = send(app.get(&path).bearer_auth(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Checks that the pull after `from` tells nothing: what came was told once.
async fn nothing_more(app: &TestApp, token: &str, from: &Value) {
    let again = pull_from(app, token, Some(from)).await;
    let told = ["created", "updated", "deleted"].map(|kind| change_ids(&again, kind));
    assert!(told.iter().all(Vec::is_empty), "{again}");
}

/// Moves `user` under `supervisor` (or under no one), as the admin.
pub async fn move_under(app: &TestApp, admin: &TestUser, user: Uuid, supervisor: Option<Uuid>) {
    let (status, body) = send(
        app.patch(&format!("/api/users/{user}"))
            .bearer_auth(&admin.token)
            .json(&json!({ "supervisor_id": supervisor })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Changes `user`'s role as the admin, and logs them in again (the change ends their sessions).
async fn change_role(app: &TestApp, admin: &TestUser, user: &TestUser, role: &str) -> String {
    let (status, body) = send(
        app.patch(&format!("/api/users/{}", user.id))
            .bearer_auth(&admin.token)
            .json(&json!({ "role": role })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.login(&user.email, crate::helpers::PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

/// A shift of three days ago, stored as history; its id.
pub async fn closed_shift(app: &TestApp, user: Uuid, facility: Uuid) -> String {
    let day = Utc::now() - Duration::days(3);
    let end = Some(day + Duration::hours(8));
    let id = app
        .insert_attendance(user, facility, day, end, "closed")
        .await;
    id.to_string()
}

#[tokio::test]
async fn a_supervisor_made_an_admin_pulls_every_record_they_lacked_and_the_deletions_since() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let facility = app.facility_at(SITE.0, SITE.1).await;
    let promoted = app.user("supervisor", None).await;
    let member = app.quick_user("focal", Some(promoted.id), facility).await;
    let other = app.quick_user("focal", None, facility).await;
    let closed = |user: Uuid| closed_shift(&app, user, facility);
    let team_record = closed(member.id).await;
    let other_record = closed(other.id).await;
    let moved = app.quick_user("focal", None, facility).await;
    let moved_record = closed(moved.id).await;
    let first = pull_from(&app, &promoted.token, None).await;
    assert_eq!(
        change_ids(&first, "created"),
        std::slice::from_ref(&team_record)
    );
    // The team member's device deletes the record after the supervisor's device pulled it.
    let delete = deletion(&json!(team_record), 0);
    let (_, body) = push(&app, &member, vec![delete]).await;
    assert_eq!(statuses(&body), ["deleted"], "{body}");
    // A worker moved under the supervisor meanwhile, with a record as old.
    move_under(&app, &admin, moved.id, Some(promoted.id)).await;

    let token = change_role(&app, &admin, &promoted, "admin").await;
    // The records the device never had come as new, though they are older than the cursor, and
    // the deletion is not lost on the way.
    let grown = pull_from(&app, &token, Some(&first)).await;
    let mut lacked = vec![other_record, moved_record];
    lacked.sort();
    assert_eq!(change_ids(&grown, "created"), lacked, "{grown}");
    assert_eq!(change_ids(&grown, "updated"), Vec::<String>::new());
    assert_eq!(change_ids(&grown, "deleted"), [team_record]);
    nothing_more(&app, &token, &grown).await;
}

#[tokio::test]
async fn an_admin_made_a_supervisor_is_told_every_record_now_out_of_their_scope_is_gone() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let facility = app.facility_at(SITE.0, SITE.1).await;
    let demoted = app.user("admin", None).await;
    let member = app.quick_user("focal", Some(demoted.id), facility).await;
    let other = app.quick_user("focal", None, facility).await;
    let closed = |user: Uuid| closed_shift(&app, user, facility);
    let mut kept = vec![closed(demoted.id).await, closed(member.id).await];
    let mut gone = vec![];
    for _ in 0..3 {
        gone.push(closed(other.id).await);
    }
    gone.sort();
    let first = pull_from(&app, &demoted.token, None).await;
    let mut everything = [kept.clone(), gone.clone()].concat();
    everything.sort();
    assert_eq!(change_ids(&first, "created"), everything);

    // Told in pages of the size asked for, however many there are; not of records made after
    // the change, which the device never had.
    let token = change_role(&app, &admin, &demoted, "supervisor").await;
    closed(other.id).await;
    let shrunk = deletions_in_pages_of_two(&app, &token, first, &gone).await;
    let again = pull_from(&app, &token, Some(&shrunk)).await;
    assert_eq!(
        change_ids(&again, "deleted"),
        Vec::<String>::new(),
        "{again}"
    );
    // What stays in scope is still theirs to read.
    kept.sort();
    let whole = pull_from(&app, &token, None).await;
    assert_eq!(change_ids(&whole, "created"), kept);
}

#[tokio::test]
async fn a_supervisor_given_a_field_role_is_told_their_former_teams_records_are_gone() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let facility = app.facility_at(SITE.0, SITE.1).await;
    let supervisor = app.user("supervisor", None).await;
    let successor = app.user("supervisor", None).await;
    let worker = app.quick_user("focal", Some(supervisor.id), facility).await;
    let own = closed_shift(&app, supervisor.id, facility).await;
    let team = closed_shift(&app, worker.id, facility).await;
    let first = pull_from(&app, &supervisor.token, None).await;
    let mut both = vec![own, team.clone()];
    both.sort();
    assert_eq!(change_ids(&first, "created"), both);

    // The team must go to another supervisor before its supervisor can be given a field role.
    move_under(&app, &admin, worker.id, Some(successor.id)).await;
    let token = change_role(&app, &admin, &supervisor, "focal").await;
    let after = pull_from(&app, &token, Some(&first)).await;
    assert_eq!(change_ids(&after, "deleted"), [team], "{after}");
    assert_eq!(change_ids(&after, "created"), Vec::<String>::new());
    assert_eq!(change_ids(&after, "updated"), Vec::<String>::new());
    nothing_more(&app, &token, &after).await;
}

#[tokio::test]
async fn a_worker_made_an_admin_from_the_command_line_leaves_their_supervisors_scope() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(SITE.0, SITE.1).await;
    let supervisor = app.user("supervisor", None).await;
    let worker = app.quick_user("focal", Some(supervisor.id), facility).await;
    let record = closed_shift(&app, worker.id, facility).await;
    let first = pull_from(&app, &supervisor.token, None).await;
    assert_eq!(change_ids(&first, "created"), std::slice::from_ref(&record));

    app.cli(&[
        "create-admin",
        "--email",
        &worker.email,
        "--password",
        "a promoted admin's passphrase",
    ]);
    // An admin answers to no one below an admin: the supervisor no longer sees them.
    let supervisor_of: Option<Uuid> =
        sqlx::query_scalar("SELECT supervisor_id FROM users WHERE id = $1")
            .bind(worker.id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(supervisor_of, None);
    let after = pull_from(&app, &supervisor.token, Some(&first)).await;
    assert_eq!(change_ids(&after, "deleted"), [record], "{after}");
}

#[tokio::test]
async fn a_worker_moved_in_while_a_pull_pages_comes_once_in_the_next_pull() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let facility = app.facility_at(SITE.0, SITE.1).await;
    let supervisor = app.user("supervisor", None).await;
    let worker = app.quick_user("focal", None, facility).await;
    let first = pull_from(&app, &supervisor.token, None).await;
    let mut own = vec![
        closed_shift(&app, supervisor.id, facility).await,
        closed_shift(&app, supervisor.id, facility).await,
    ];
    own.sort();
    let record = closed_shift(&app, worker.id, facility).await;
    // The first page of the next pull fixes what it reads up to; the worker moves in before
    // the second.
    let mut page = pull_page(&app, &supervisor.token, Some(&first), 1).await;
    assert_eq!(page["has_more"], json!(true), "{page}");
    move_under(&app, &admin, worker.id, Some(supervisor.id)).await;
    let mut created = change_ids(&page, "created");
    while page["has_more"] == json!(true) {
        page = pull_page(&app, &supervisor.token, Some(&page), 1).await;
        created.extend(change_ids(&page, "created"));
    }
    created.sort();
    assert_eq!(created, own);
    // The worker's record comes with the next pull, once.
    let next = pull_from(&app, &supervisor.token, Some(&page)).await;
    assert_eq!(change_ids(&next, "created"), [record], "{next}");
    nothing_more(&app, &supervisor.token, &next).await;
}

#[tokio::test]
async fn a_deletion_reaches_a_supervisor_whose_worker_moved_away_and_back_while_a_pull_paged() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let facility = app.facility_at(SITE.0, SITE.1).await;
    let supervisor = app.user("supervisor", None).await;
    let other = app.user("supervisor", None).await;
    let worker = app.quick_user("focal", None, facility).await;
    move_under(&app, &admin, worker.id, Some(supervisor.id)).await;
    let record = closed_shift(&app, worker.id, facility).await;
    let first = pull_from(&app, &supervisor.token, None).await;
    assert!(change_ids(&first, "created").contains(&record), "{first}");
    // Since: two of the supervisor's own shifts, then the worker's record deleted.
    for _ in 0..2 {
        closed_shift(&app, supervisor.id, facility).await;
    }
    app.delete_on_server(&record).await;
    // The first page fixes what the pull reads up to; the worker is moved to another team and
    // back before the rest.
    let mut page = pull_page(&app, &supervisor.token, Some(&first), 1).await;
    assert_eq!(page["has_more"], json!(true), "{page}");
    let mut deleted = change_ids(&page, "deleted");
    move_under(&app, &admin, worker.id, Some(other.id)).await;
    move_under(&app, &admin, worker.id, Some(supervisor.id)).await;
    while page["has_more"] == json!(true) {
        page = pull_page(&app, &supervisor.token, Some(&page), 1).await;
        deleted.extend(change_ids(&page, "deleted"));
    }
    let next = pull_from(&app, &supervisor.token, Some(&page)).await;
    deleted.extend(change_ids(&next, "deleted"));
    assert!(deleted.contains(&record), "the deletion never came: {next}");
}

/// Holds inserts into the audit trail until the transaction is committed: a change that writes
/// its audit row last waits there, uncommitted, with everything else written.
async fn hold_the_audit_trail(app: &TestApp) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE activities IN SHARE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_written_while_its_worker_moves_reaches_the_new_supervisor() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let facility = app.facility_at(SITE.0, SITE.1).await;
    let supervisor = app.user("supervisor", None).await;
    let worker = app.quick_user("focal", None, facility).await;
    let first = pull_from(&app, &supervisor.token, None).await;

    // The record's transaction is open when the move begins, and commits before it; the
    // supervisor's device pulls between the two commits.
    let mut writer = app.db.begin().await.unwrap();
    let day = Utc::now() - Duration::days(3);
    let record: Uuid = sqlx::query_scalar(
        "INSERT INTO attendance (user_id, facility_id, status, clock_in_at, clock_out_at,
                                 clock_in_latitude, clock_in_longitude, distance_m)
         VALUES ($1, $2, 'closed', $3, $4, -1.9456, 30.1270, 0) RETURNING id",
    )
    .bind(worker.id)
    .bind(facility)
    .bind(day)
    .bind(day + Duration::hours(8))
    .fetch_one(&mut *writer)
    .await
    .unwrap();
    let audit = hold_the_audit_trail(&app).await;
    let moved = send(
        app.patch(&format!("/api/users/{}", worker.id))
            .bearer_auth(&admin.token)
            .json(&json!({"supervisor_id": supervisor.id})),
    );
    let between = async {
        app.until_waiting_on_locks(1, "the move waits").await;
        writer.commit().await.unwrap();
        let between = pull_from(&app, &supervisor.token, Some(&first)).await;
        audit.commit().await.unwrap();
        between
    };
    let ((status, body), between) = tokio::join!(moved, between);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(change_ids(&between, "created"), Vec::<String>::new());

    let after = pull_from(&app, &supervisor.token, Some(&between)).await;
    assert_eq!(
        change_ids(&after, "created"),
        [record.to_string()],
        "{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_made_a_supervisor_is_told_of_a_record_that_reached_them_as_the_change_committed()
{
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let facility = app.facility_at(SITE.0, SITE.1).await;
    let demoted = app.user("admin", None).await;
    let other = app.quick_user("focal", None, facility).await;
    let first = pull_from(&app, &demoted.token, None).await;

    // A record whose transaction begins after the role change's and commits before it reaches
    // the device while it is still an admin's.
    let audit = hold_the_audit_trail(&app).await;
    let changed = send(
        app.patch(&format!("/api/users/{}", demoted.id))
            .bearer_auth(&admin.token)
            .json(&json!({"role": "supervisor"})),
    );
    let between = async {
        app.until_waiting_on_locks(1, "the role change waits at its audit row")
            .await;
        let record = closed_shift(&app, other.id, facility).await;
        let between = pull_from(&app, &demoted.token, Some(&first)).await;
        assert_eq!(
            change_ids(&between, "created"),
            std::slice::from_ref(&record)
        );
        audit.commit().await.unwrap();
        (record, between)
    };
    let ((status, body), (record, between)) = tokio::join!(changed, between);
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = app.login(&demoted.email, crate::helpers::PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let shrunk = pull_from(&app, token, Some(&between)).await;
    assert_eq!(change_ids(&shrunk, "deleted"), [record], "{shrunk}");
}

#[tokio::test]
async fn a_token_served_from_before_a_role_change_made_elsewhere_cannot_use_up_the_reset() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(SITE.0, SITE.1).await;
    let supervisor = app.user("supervisor", None).await;
    let other = app.quick_user("focal", None, facility).await;
    let other_record = closed_shift(&app, other.id, facility).await;
    let first = pull_from(&app, &supervisor.token, None).await;

    // Made an admin by the command line, another process: the service still has the
    // supervisor's token state for a while.
    app.cli(&[
        "create-admin",
        "--email",
        &supervisor.email,
        "--password",
        "a new admin passphrase",
    ]);
    let (status, body) = pull_at(&app, &supervisor.token, first["cursor"].as_str().unwrap()).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");

    let (status, login) = app.login(&supervisor.email, "a new admin passphrase").await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let token = login["access_token"].as_str().unwrap();
    let grown = pull_from(&app, token, Some(&first)).await;
    assert_eq!(change_ids(&grown, "created"), [other_record], "{grown}");
}

#[tokio::test]
async fn a_record_stored_before_it_aged_past_the_limit_replays_as_a_duplicate_and_takes_edits() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let id = Uuid::new_v4();
    let (_, body) = push(&app, &user, vec![shift(id, facility, 2, 6, 1)]).await;
    assert_eq!(statuses(&body), ["created"], "{body}");
    // The device heard nothing back, and tries again once the shift is past the 30-day limit
    // (its times moved back here, as the days would have moved them).
    sqlx::query(
        "UPDATE attendance SET clock_in_at = clock_in_at - interval '33 days',
                               clock_out_at = clock_out_at - interval '33 days' WHERE id = $1",
    )
    .bind(id)
    .execute(&app.db)
    .await
    .unwrap();
    let mut replay = shift(id, facility, 35, 6, 1);
    replay["client_timestamp"] = shift(id, facility, 2, 6, 1)["client_timestamp"].clone();
    let (status, body) = push(&app, &user, vec![replay.clone()]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(statuses(&body), ["duplicate"], "{body}");

    // An edit of its notes keeps the stored times, so it applies too; moving a clock time to
    // another moment past the limit is still refused.
    replay["data"]["notes"] = json!("signed off by the in-charge");
    let mut moved = replay.clone();
    moved["id"] = json!(Uuid::new_v4());
    moved["client_timestamp"] = json!((Utc::now() - Duration::days(34)).to_rfc3339());
    let (_, body) = push(&app, &user, vec![replay, moved]).await;
    assert_eq!(statuses(&body), ["updated", "rejected"], "{body}");
    assert!(
        body["results"][1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("clock_in_at"),
        "{body}"
    );
    let notes: String = sqlx::query_scalar("SELECT notes FROM attendance WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(notes, "signed off by the in-charge");
}

#[tokio::test]
async fn a_stale_copy_with_times_outside_the_window_is_rejected_not_queued_for_an_admin() {
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let id = Uuid::new_v4();
    let mut record = shift(id, facility, 2, 6, 1);
    push(&app, &user, vec![record.clone()]).await;
    record["sync_version"] = json!(2);
    record["data"]["notes"] = json!("edited");
    let (_, body) = push(&app, &user, vec![record.clone()]).await;
    assert_eq!(statuses(&body), ["updated"], "{body}");

    // A copy from before the edit, its clock-in moved 60 days back, to be settled by hand.
    let mut stale = shift(id, facility, 60, 6, 1);
    stale["conflict_strategy"] = json!("manual");
    let (_, body) = push(&app, &user, vec![stale]).await;
    assert_eq!(statuses(&body), ["rejected"], "{body}");
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_conflicts")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(queued, 0);
}

#[tokio::test]
async fn a_pull_sends_facilities_before_the_history_and_says_when_more_wait() {
    // Arrange: two facilities and one shift.
    let app = TestApp::spawn().await;
    let (user, facility) = setup(&app).await;
    let second = app.facility_at(SITE.0 + 0.5, SITE.1).await;
    let id = Uuid::new_v4();
    let (status, body) = push(&app, &user, vec![shift(id, facility, 1, 8, 1)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Act: pages of two.
    let first = pull_page(&app, &user.token, None, 2).await;
    let rest = pull_page(&app, &user.token, Some(&first), 2).await;

    // Assert: the facilities fill the first page, which says the shift waits.
    let mut facilities: Vec<&str> = ["created", "updated"]
        .iter()
        .flat_map(|kind| first["changes"]["facilities"][kind].as_array().unwrap())
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    facilities.sort();
    let mut expected = [facility.to_string(), second.to_string()];
    expected.sort();
    assert_eq!(facilities, expected, "{first}");
    assert_eq!(
        change_ids(&first, "created"),
        Vec::<String>::new(),
        "{first}"
    );
    assert_eq!(first["has_more"], json!(true), "{first}");
    assert_eq!(rest["has_more"], json!(false), "{rest}");
    assert_eq!(
        rest["changes"]["facilities"]["created"],
        json!([]),
        "{rest}"
    );
    assert_eq!(
        change_ids(&rest, "created")
            .into_iter()
            .chain(change_ids(&rest, "updated"))
            .collect::<Vec<_>>(),
        vec![id.to_string()],
        "{rest}"
    );
    nothing_more(&app, &user.token, &rest).await;
}

#[tokio::test]
async fn after_a_logical_restore_into_another_cluster_devices_are_sent_everything_again() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(SITE.0, SITE.1).await;
    let user = app.quick_user("focal", None, facility).await;
    let record = closed_shift(&app, user.id, facility).await;
    let (status, first) = send(app.get("/api/sync/watermelon").bearer_auth(&user.token)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let timestamp = first["timestamp"].as_i64().unwrap();
    let cursor_before = pull_from(&app, &user.token, None).await;
    let stamped = "SELECT updated_at FROM attendance WHERE id = $1";
    let updated_before: DateTime<Utc> = sqlx::query_scalar(stamped)
        .bind(Uuid::parse_str(&record).unwrap())
        .fetch_one(&app.db)
        .await
        .unwrap();

    // A dump restored into a new cluster: every mark, and every snapshot kept, lies ahead of
    // the new cluster's transaction counter.
    sqlx::raw_sql(
        "ALTER TABLE attendance DISABLE TRIGGER attendance_stamp;
         ALTER TABLE facilities DISABLE TRIGGER facilities_stamp;
         UPDATE attendance SET change_xid = (pg_current_xact_id()::text::bigint + 1000000)::text::xid8,
                               created_xid = (pg_current_xact_id()::text::bigint + 1000000)::text::xid8;
         UPDATE facilities SET change_xid = (pg_current_xact_id()::text::bigint + 1000000)::text::xid8,
                               created_xid = (pg_current_xact_id()::text::bigint + 1000000)::text::xid8;
         ALTER TABLE attendance ENABLE TRIGGER attendance_stamp;
         ALTER TABLE facilities ENABLE TRIGGER facilities_stamp;
         UPDATE sync_snapshots SET snapshot = '2000000000:2000000000:';",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let far = field_attendance::sync::pull::Cursor {
        base: Some("2000000000:2000000000:".into()),
        ..Default::default()
    }
    .encode(&field_attendance::auth::jwt::JwtKeys::new(&app.config.auth));

    // The service starts on the restored database.
    field_attendance::startup::prepare_database(&app.config)
        .await
        .unwrap();

    // A device starting over is sent the record; one syncing from its old timestamp is sent it
    // again; its change time is the one it had.
    let fresh = pull_from(&app, &user.token, None).await;
    assert_eq!(
        fresh["changes"]["attendance"]["created"][0]["id"], record,
        "{fresh}"
    );
    assert!(
        fresh["changes"]["facilities"]["created"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == facility.to_string()),
        "{fresh}"
    );
    sent_again_from(&app, &user, timestamp, &record).await;
    let updated_after: DateTime<Utc> = sqlx::query_scalar(stamped)
        .bind(Uuid::parse_str(&record).unwrap())
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(updated_after, updated_before);
    // A record written since is pulled after the new position, once.
    let later = closed_shift(&app, user.id, facility).await;
    let next = pull_from(&app, &user.token, Some(&fresh)).await;
    assert_eq!(
        next["changes"]["attendance"]["created"][0]["id"], later,
        "{next}"
    );
    nothing_more(&app, &user.token, &next).await;

    // A cursor from before the restore is refused, though the counter is past it, as is one
    // from beyond the restored history: neither is read as having seen all since.
    let (status, body) =
        pull_at(&app, &user.token, cursor_before["cursor"].as_str().unwrap()).await;
    assert_invalid(status, &body, "cursor");
    let (status, body) = pull_at(&app, &user.token, &far).await;
    assert_invalid(status, &body, "cursor");

    // Started again, the service leaves the marks as they now are.
    let marks = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT string_agg(change_xid::text, ',' ORDER BY id) FROM attendance",
        )
        .fetch_one(&app.db)
        .await
        .unwrap()
    };
    let before = marks().await;
    field_attendance::startup::prepare_database(&app.config)
        .await
        .unwrap();
    assert_eq!(marks().await, before);
}

#[tokio::test]
async fn watermelondb_timestamps_alone_ahead_of_a_restored_database_are_restamped() {
    let app = TestApp::spawn().await;
    let facility = app.facility_at(SITE.0, SITE.1).await;
    let user = app.quick_user("focal", None, facility).await;
    let record = closed_shift(&app, user.id, facility).await;
    let (_, first) = send(app.get("/api/sync/watermelon").bearer_auth(&user.token)).await;
    let timestamp = first["timestamp"].as_i64().unwrap();
    // The rows' marks are behind the new counter, the timestamp's snapshot ahead of it.
    sqlx::query("UPDATE sync_snapshots SET snapshot = '2000000000:2000000000:'")
        .execute(&app.db)
        .await
        .unwrap();
    field_attendance::startup::prepare_database(&app.config)
        .await
        .unwrap();
    sent_again_from(&app, &user, timestamp, &record).await;
}

/// Checks that a WatermelonDB pull from `timestamp` sends `record` again.
async fn sent_again_from(app: &TestApp, user: &TestUser, timestamp: i64, record: &str) {
    let (status, again) = send(
        app.get(&format!("/api/sync/watermelon?last_pulled_at={timestamp}"))
            .bearer_auth(&user.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        again["changes"]["attendance"]["updated"][0]["id"], record,
        "{again}"
    );
}
