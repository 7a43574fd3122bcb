//! Profiles, user management, the supervision tree and who may see whom.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, assert_error, assert_invalid, send};

#[tokio::test]
async fn me_shows_the_facility_council_region_hierarchy_and_the_supervisor() {
    let app = TestApp::spawn().await;
    let boss = app.user("supervisor", None).await;
    let worker = app.user("focal", Some(boss.id)).await;
    let (status, me) = send(app.get("/api/users/me").bearer_auth(&worker.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["id"], json!(worker.id));
    assert_eq!(me["role"], "focal");
    assert_eq!(me["status"], "active");
    assert_eq!(me["facility"]["council"]["name"], "Gasabo");
    assert_eq!(me["facility"]["council"]["region"]["name"], "Kigali City");
    assert_eq!(me["supervisor"]["id"], json!(boss.id));
    assert!(me["last_login_at"].as_str().unwrap().ends_with('Z'));
    assert!(me.get("password_hash").is_none());
}

#[tokio::test]
async fn patch_me_changes_names_and_phone_only() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    let (status, body) = send(
        app.patch("/api/users/me")
            .bearer_auth(&user.token)
            .json(&json!({"first_name": " Jean ", "phone": "+250788000111"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["first_name"], "Jean");
    assert_eq!(body["phone"], "+250788000111");

    let before: (String, String, Option<uuid::Uuid>) =
        sqlx::query_as("SELECT role, status, facility_id FROM users WHERE id = $1")
            .bind(user.id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    for forbidden in [
        json!({"role": "admin"}),
        json!({"active": true}),
        json!({"status": "active"}),
        json!({"facility_id": uuid::Uuid::new_v4()}),
        json!({"first_name": "Ok", "is_admin": true}),
    ] {
        let (status, body) = send(
            app.patch("/api/users/me")
                .bearer_auth(&user.token)
                .json(&forbidden),
        )
        .await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
    }
    let after: (String, String, Option<uuid::Uuid>) =
        sqlx::query_as("SELECT role, status, facility_id FROM users WHERE id = $1")
            .bind(user.id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(before, after);
    let first_name: String = sqlx::query_scalar("SELECT first_name FROM users WHERE id = $1")
        .bind(user.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(
        first_name, "Jean",
        "the refused patch with a valid field changed nothing"
    );
}

/// admin; backstopper B > supervisor S > worker W (+ pending P who named S); unrelated
/// supervisor U with worker X; and a field worker F of nobody.
struct Tree {
    admin: TestUser,
    backstopper: TestUser,
    supervisor: TestUser,
    worker: TestUser,
    unrelated: TestUser,
    other_worker: TestUser,
    field: TestUser,
}

async fn tree(app: &TestApp) -> Tree {
    let admin = app.admin().await;
    let backstopper = app.user("backstopper", None).await;
    let supervisor = app.user("supervisor", Some(backstopper.id)).await;
    let worker = app.user("focal", Some(supervisor.id)).await;
    let unrelated = app.user("supervisor", None).await;
    let other_worker = app.user("ddo", Some(unrelated.id)).await;
    let field = app.user("data_clerk", None).await;
    Tree {
        admin,
        backstopper,
        supervisor,
        worker,
        unrelated,
        other_worker,
        field,
    }
}

/// The `field` of each user on a page, in order.
fn listed(body: &Value, field: &str) -> Vec<String> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u[field].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn supervisors_and_backstoppers_list_exactly_their_tree() {
    let app = TestApp::spawn().await;
    let t = tree(&app).await;
    let ids = |body: &Value| listed(body, "id");
    let (_, body) = send(app.get("/api/users").bearer_auth(&t.supervisor.token)).await;
    assert_eq!(ids(&body), vec![t.worker.id.to_string()]);
    assert_eq!(body["total"], 1);

    let (_, body) = send(app.get("/api/users").bearer_auth(&t.backstopper.token)).await;
    let mut seen = ids(&body);
    seen.sort();
    let mut expected = vec![t.supervisor.id.to_string(), t.worker.id.to_string()];
    expected.sort();
    assert_eq!(seen, expected);

    let (_, body) = send(
        app.get("/api/users?per_page=100")
            .bearer_auth(&t.admin.token),
    )
    .await;
    assert_eq!(body["total"], 7);
    assert!(ids(&body).contains(&t.other_worker.id.to_string()));

    let (status, body) = send(app.get("/api/users").bearer_auth(&t.field.token)).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn user_search_filters_and_paginates() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    for i in 0..7 {
        let (status, body) = send(app.post("/api/users").bearer_auth(&admin.token).json(&json!({
            "email": format!("nurse{i}@clinic.example"), "password": "a long enough passphrase",
            "first_name": "Nurse", "last_name": format!("Mukamana{i}"), "role": "focal",
            "employee_id": format!("EMP-{i:03}"), "phone": format!("+25078800{i:04}"),
        }))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (_, body) = send(
        app.get("/api/users?q=MUKAMANA&per_page=3&page=2")
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(body["total"], 7);
    assert_eq!(body["page"], 2);
    assert_eq!(body["per_page"], 3);
    assert_eq!(body["data"].as_array().unwrap().len(), 3);
    let last_names = |body: &Value| listed(body, "last_name");
    assert_eq!(
        last_names(&body),
        ["Mukamana3", "Mukamana2", "Mukamana1"],
        "newest first"
    );
    let (_, body) = send(
        app.get("/api/users?q=mukamana&per_page=3&page=4")
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(body["total"], 7, "a page past the end still counts");
    assert!(last_names(&body).is_empty());
    let (_, body) = send(app.get("/api/users?q=emp-004").bearer_auth(&admin.token)).await;
    assert_eq!(body["total"], 1);
    assert_eq!(body["data"][0]["email"], "nurse4@clinic.example");
    let (_, body) = send(app.get("/api/users?q=nurse%25").bearer_auth(&admin.token)).await;
    assert_eq!(body["total"], 0, "% is matched literally");
    // A full-width `％` or `＿` (which unaccenting makes `%` and `_`) is literal too.
    for literal in ["nurse_", "nurse%5C", "nurse％", "nurse＿"] {
        let (_, body) = send(
            app.get(&format!("/api/users?q={literal}"))
                .bearer_auth(&admin.token),
        )
        .await;
        assert_eq!(body["total"], 0, "{literal} is matched literally");
    }
    // Accents aside, either way: typed without them on a phone, or with them.
    let (status, body) = send(
        app.post("/api/users")
            .bearer_auth(&admin.token)
            .json(&json!({
                "email": "theo@clinic.example", "password": "a long enough passphrase",
                "first_name": "Théogène", "last_name": "Uwimana", "role": "focal",
            })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for typed in ["theogene", "THEOGENE", "Théogène", "théo", "THÉOGÈNE"] {
        let (_, body) = send(
            app.get(&format!("/api/users?q={typed}"))
                .bearer_auth(&admin.token),
        )
        .await;
        assert_eq!(listed(&body, "email"), ["theo@clinic.example"], "{typed}");
    }
    let (_, body) = send(app.get("/api/users?q=mukamána").bearer_auth(&admin.token)).await;
    assert_eq!(body["total"], 7);
    let (_, body) = send(app.get("/api/users?role=admin").bearer_auth(&admin.token)).await;
    assert_eq!(body["total"], 1);
    let (status, body) = send(app.get("/api/users?per_page=101").bearer_auth(&admin.token)).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    let (status, body) = send(
        app.get("/api/users?role=overlord")
            .bearer_auth(&admin.token),
    )
    .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn a_tree_of_any_depth_is_one_tree_for_seeing_and_for_cycles() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let top = app.user("supervisor", None).await;
    // Seventy supervisors, each under the one before.
    let mut bottom = top.id;
    for _ in 0..70 {
        bottom = app
            .insert_user("supervisor", "active", Some(bottom), None)
            .await
            .0;
    }
    let (status, body) = send(
        app.get(&format!("/api/users/{bottom}"))
            .bearer_auth(&top.token),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the top sees the bottom as lists do: {body}"
    );
    let (status, body) = send(
        app.patch(&format!("/api/users/{}", top.id))
            .bearer_auth(&admin.token)
            .json(&json!({"supervisor_id": bottom})),
    )
    .await;
    assert_invalid(status, &body, "supervisor_id");
}

#[tokio::test]
async fn a_supervisor_id_must_name_a_supervisor_and_never_make_a_cycle() {
    let app = TestApp::spawn().await;
    let t = tree(&app).await;
    let patch = |id: uuid::Uuid, body: Value| {
        app.patch(&format!("/api/users/{id}"))
            .bearer_auth(&t.admin.token)
            .json(&body)
    };
    // backstopper's supervisor would be the supervisor below them: a cycle.
    let (status, body) = send(patch(
        t.backstopper.id,
        json!({"supervisor_id": t.supervisor.id}),
    ))
    .await;
    assert_invalid(status, &body, "supervisor_id");
    let (status, body) = send(patch(
        t.supervisor.id,
        json!({"supervisor_id": t.supervisor.id}),
    ))
    .await;
    assert_invalid(status, &body, "supervisor_id");
    // A field worker cannot supervise.
    let (status, body) = send(patch(
        t.other_worker.id,
        json!({"supervisor_id": t.field.id}),
    ))
    .await;
    assert_invalid(status, &body, "supervisor_id");
    // Moving a worker to another supervisor is fine; null clears it.
    let (status, body) = send(patch(t.worker.id, json!({"supervisor_id": t.unrelated.id}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["supervisor"]["id"], json!(t.unrelated.id));
    let (status, body) = send(patch(t.worker.id, json!({"supervisor_id": null}))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["supervisor"].is_null());
    // Someone's supervisor stays able to supervise: `unrelated` still has a team, and keeps
    // their role until it is given another supervisor; `supervisor` has none left.
    let (status, body) = send(patch(t.unrelated.id, json!({"role": "focal"}))).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let role: String = sqlx::query_scalar("SELECT role FROM users WHERE id = $1")
        .bind(t.unrelated.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(role, "supervisor");
    let (status, body) = send(patch(t.supervisor.id, json!({"role": "focal"}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn supervisors_may_change_only_the_facility_of_their_team() {
    let app = TestApp::spawn().await;
    let t = tree(&app).await;
    let facility = app.facility().await;
    let (status, body) = send(
        app.patch(&format!("/api/users/{}", t.worker.id))
            .bearer_auth(&t.supervisor.token)
            .json(&json!({"facility_id": facility})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["facility"]["id"], json!(facility));
    let (status, body) = send(
        app.patch(&format!("/api/users/{}", t.worker.id))
            .bearer_auth(&t.supervisor.token)
            .json(&json!({"role": "supervisor"})),
    )
    .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let role: String = sqlx::query_scalar("SELECT role FROM users WHERE id = $1")
        .bind(t.worker.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(role, "focal");
}

#[tokio::test]
async fn an_edit_by_someone_who_may_not_make_it_is_refused_whatever_its_body() {
    let app = TestApp::spawn().await;
    let t = tree(&app).await;
    let edit = |token: &str, id: uuid::Uuid, body: &'static str| {
        send(
            app.patch(&format!("/api/users/{id}"))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body),
        )
    };
    for body in [
        r#"{"no_such_field": 1}"#,
        "{not json",
        r#"{"first_name": ""}"#,
    ] {
        // A field worker, about another user and about themself; a supervisor, outside their
        // tree.
        let (status, answer) = edit(&t.worker.token, t.unrelated.id, body).await;
        assert_error(status, &answer, StatusCode::NOT_FOUND, "not_found");
        let (status, answer) = edit(&t.worker.token, t.worker.id, body).await;
        assert_error(status, &answer, StatusCode::FORBIDDEN, "forbidden");
        let (status, answer) = edit(&t.supervisor.token, t.unrelated.id, body).await;
        assert_error(status, &answer, StatusCode::NOT_FOUND, "not_found");
    }
    // One who may, is told what is wrong with it.
    let (status, answer) = edit(&t.supervisor.token, t.worker.id, "{not json").await;
    assert_error(status, &answer, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn list_totals_follow_every_creation_and_change_of_role_or_status() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    // What the admin's list reports against what the table holds, for each filter.
    let check = async |filter: &str| {
        let (status, body) = send(
            app.get(&format!("/api/users?per_page=1{filter}"))
                .bearer_auth(&admin.token),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let mut sql = String::from("SELECT count(*) FROM users WHERE true");
        for (key, value) in filter.split('&').filter_map(|p| p.split_once('=')) {
            sql.push_str(&format!(" AND {key} = '{value}'"));
        }
        let counted: i64 = sqlx::query_scalar(&sql).fetch_one(&app.db).await.unwrap();
        assert_eq!(body["total"], counted, "total for `{filter}`");
        counted
    };
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(app.user("focal", None).await.id);
        assert_eq!(check("&role=focal").await, i + 1);
    }
    assert_eq!(check("").await, 4);
    let (status, _) = send(
        app.patch(&format!("/api/users/{}", ids[0]))
            .bearer_auth(&admin.token)
            .json(&json!({"role": "ddo"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(
        app.delete(&format!("/api/users/{}", ids[1]))
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(check("&role=focal").await, 2);
    assert_eq!(check("&role=ddo").await, 1);
    assert_eq!(check("&status=inactive").await, 1);
    assert_eq!(check("&role=focal&status=active").await, 1);
    assert_eq!(check("").await, 4);
    // A bulk insert and a delete, straight in the database, are counted too.
    sqlx::query(
        "INSERT INTO users (email, password_hash, first_name, last_name, role, status)
         SELECT 'bulk' || g || '@example.org', 'x', 'Bulk', 'User', 'data_clerk', 'pending'
         FROM generate_series(1, 25) g",
    )
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query("DELETE FROM users WHERE email IN ('bulk1@example.org', 'bulk2@example.org')")
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(check("&role=data_clerk&status=pending").await, 23);
    assert_eq!(check("").await, 27);

    // Filters through the facility: its council and its region.
    let (council, region): (uuid::Uuid, uuid::Uuid) = sqlx::query_as(
        "SELECT c.id, c.region_id FROM users u JOIN facilities f ON f.id = u.facility_id
         JOIN councils c ON c.id = f.council_id WHERE u.id = $1",
    )
    .bind(ids[2])
    .fetch_one(&app.db)
    .await
    .unwrap();
    for (filter, sql) in [
        (
            format!("council_id={council}"),
            "SELECT count(*) FROM users u JOIN facilities f ON f.id = u.facility_id WHERE f.council_id = $1",
        ),
        (
            format!("region_id={region}"),
            "SELECT count(*) FROM users u JOIN facilities f ON f.id = u.facility_id
             JOIN councils c ON c.id = f.council_id WHERE c.region_id = $1",
        ),
    ] {
        let id = if filter.starts_with("council") {
            council
        } else {
            region
        };
        let counted: i64 = sqlx::query_scalar(sql)
            .bind(id)
            .fetch_one(&app.db)
            .await
            .unwrap();
        let (status, body) = send(
            app.get(&format!("/api/users?{filter}"))
                .bearer_auth(&admin.token),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(counted >= 1);
        assert_eq!(
            (
                body["total"].as_i64(),
                body["data"].as_array().map(Vec::len)
            ),
            (Some(counted), Some(counted as usize)),
            "{filter}"
        );
    }
}

#[tokio::test]
async fn an_admin_cannot_deactivate_themself() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (status, body) = send(
        app.delete(&format!("/api/users/{}", admin.id))
            .bearer_auth(&admin.token),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    let (status, body) = send(
        app.patch(&format!("/api/users/{}", admin.id))
            .bearer_auth(&admin.token)
            .json(&json!({"status": "inactive"})),
    )
    .await;
    assert_invalid(status, &body, "status");
    assert_eq!(
        send(app.get("/api/users/me").bearer_auth(&admin.token))
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn admins_create_users_of_any_role_and_duplicates_conflict() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let facility = app.facility().await;
    let body = json!({
        "email": "new.supervisor@example.org", "password": "a long enough passphrase",
        "first_name": "Grace", "last_name": "Ingabire", "role": "supervisor", "facility_id": facility,
    });
    let (status, created) =
        send(app.post("/api/users").bearer_auth(&admin.token).json(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["role"], "supervisor");
    assert_eq!(created["status"], "active");
    let (status, err) = send(app.post("/api/users").bearer_auth(&admin.token).json(&body)).await;
    assert_error(status, &err, StatusCode::CONFLICT, "duplicate");
    assert_eq!(
        app.login("new.supervisor@example.org", "a long enough passphrase")
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_user_placed_while_their_facility_is_being_closed_is_refused() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let facility = app.facility().await;
    let worker = app.user("focal", None).await;
    let created = json!({
        "email": "placed@example.org", "password": "a long enough passphrase",
        "first_name": "Placed", "last_name": "Late", "role": "focal", "facility_id": facility,
    });
    let registered = json!({
        "email": "registered@example.org", "password": "a long enough passphrase",
        "first_name": "Self", "last_name": "Made", "facility_id": facility,
    });
    let requests = [
        app.post("/api/users")
            .bearer_auth(&admin.token)
            .json(&created),
        app.post("/api/auth/register").json(&registered),
        app.patch(&format!("/api/users/{}", worker.id))
            .bearer_auth(&admin.token)
            .json(&json!({"facility_id": facility})),
    ];
    for request in requests {
        // The facility's deactivation has begun (its row is held) when the request checks it.
        let mut closing = app.db.begin().await.unwrap();
        sqlx::query("UPDATE facilities SET status = 'inactive' WHERE id = $1")
            .bind(facility)
            .execute(&mut *closing)
            .await
            .unwrap();
        let commit = async {
            app.until_waiting_on_rows(1, "the request waits on the closing facility")
                .await;
            closing.commit().await.unwrap();
        };
        let ((status, body), ()) = tokio::join!(send(request), commit);
        assert_invalid(status, &body, "facility_id");
        sqlx::query("UPDATE facilities SET status = 'active' WHERE id = $1")
            .bind(facility)
            .execute(&app.db)
            .await
            .unwrap();
    }
    let placed: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE facility_id = $1")
        .bind(facility)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(placed, 0);
}

#[tokio::test]
async fn no_one_is_newly_assigned_to_a_closed_facility_but_its_staff_can_still_be_edited() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let facility = app.facility().await;
    let body = json!({
        "email": "placed@example.org", "password": "a long enough passphrase",
        "first_name": "Placed", "last_name": "Early", "role": "focal", "facility_id": facility,
    });
    let (status, placed) = send(app.post("/api/users").bearer_auth(&admin.token).json(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{placed}");
    let (status, _) = send(
        app.delete(&format!("/api/facilities/{facility}"))
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let mut late = body.clone();
    late["email"] = json!("placed.late@example.org");
    let (status, err) = send(app.post("/api/users").bearer_auth(&admin.token).json(&late)).await;
    assert_invalid(status, &err, "facility_id");
    let other = app.user("focal", None).await;
    let (status, err) = send(
        app.patch(&format!("/api/users/{}", other.id))
            .bearer_auth(&admin.token)
            .json(&json!({"facility_id": facility})),
    )
    .await;
    assert_error(
        status,
        &err,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    // Someone already there keeps it while other fields change.
    let (status, edited) = send(
        app.patch(&format!("/api/users/{}", placed["id"].as_str().unwrap()))
            .bearer_auth(&admin.token)
            .json(&json!({"facility_id": facility, "last_name": "Moved"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["last_name"], "Moved");
}

/// Every route × {anonymous, field role, the target's supervisor, the backstopper above that
/// supervisor, an unrelated supervisor, admin}.
#[tokio::test]
async fn a_supervisor_named_by_a_new_user_is_not_made_a_field_worker_meanwhile() {
    // The new user's insert is held (the test holds an uncommitted row with the same email)
    // after the service has checked the supervisor. The role change that arrives then must
    // wait for the new user, and then finds it: someone's supervisor stays able to supervise.
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let boss = app.user("supervisor", None).await;
    let email = "held.worker@example.org";
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO users (email, password_hash, first_name, last_name, role, status)
         VALUES ($1, 'x', 'Held', 'Row', 'focal', 'active')",
    )
    .bind(email)
    .execute(&mut *holder)
    .await
    .unwrap();
    let create = send(
        app.post("/api/users")
            .bearer_auth(&admin.token)
            .json(&json!({
                "email": email, "password": "a long enough passphrase", "first_name": "Aline",
                "last_name": "Uwase", "role": "focal", "supervisor_id": boss.id,
            })),
    );
    let demote_then_let_go = async {
        app.until_waiting_on_rows(1, "the new user waits on the held email")
            .await;
        let demote = send(
            app.patch(&format!("/api/users/{}", boss.id))
                .bearer_auth(&admin.token)
                .json(&json!({"role": "focal"})),
        );
        let let_go = async {
            app.until_waiting_on_rows(2, "the role change waits on the new user")
                .await;
            holder.rollback().await.unwrap();
        };
        tokio::join!(demote, let_go).0
    };
    let ((created, body), (demoted, err)) = tokio::join!(create, demote_then_let_go);
    assert_eq!(created, StatusCode::CREATED, "{body}");
    assert_eq!(body["supervisor"]["id"], json!(boss.id));
    assert_error(demoted, &err, StatusCode::CONFLICT, "conflict");
    let role: String = sqlx::query_scalar("SELECT role FROM users WHERE id = $1")
        .bind(boss.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(role, "supervisor");
}

#[tokio::test]
async fn a_supervisor_changes_only_the_facility_of_their_team_and_nothing_of_their_own() {
    let app = TestApp::spawn().await;
    let t = tree(&app).await;
    let facility = app.facility().await;
    let fields = "SELECT row_to_json(u)::text FROM (SELECT email, first_name, role, status,
                         supervisor_id, facility_id FROM users WHERE id = $1) u";
    let stored = |id: uuid::Uuid| {
        sqlx::query_scalar::<_, String>(fields)
            .bind(id)
            .fetch_one(&app.db)
    };
    let (worker_before, own_before) = (
        stored(t.worker.id).await.unwrap(),
        stored(t.supervisor.id).await.unwrap(),
    );
    for body in [
        json!({"role": "supervisor"}),
        json!({"status": "suspended"}),
        json!({"email": "renamed@test.example"}),
        json!({"supervisor_id": t.unrelated.id}),
        json!({"first_name": "Renamed"}),
        json!({"facility_id": facility, "first_name": "Renamed"}),
    ] {
        let (status, answer) = send(
            app.patch(&format!("/api/users/{}", t.worker.id))
                .bearer_auth(&t.supervisor.token)
                .json(&body),
        )
        .await;
        assert_error(status, &answer, StatusCode::FORBIDDEN, "forbidden");
    }
    // Not their own record either, not even its facility.
    let (status, answer) = send(
        app.patch(&format!("/api/users/{}", t.supervisor.id))
            .bearer_auth(&t.supervisor.token)
            .json(&json!({"facility_id": facility})),
    )
    .await;
    assert_error(status, &answer, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(stored(t.worker.id).await.unwrap(), worker_before);
    assert_eq!(stored(t.supervisor.id).await.unwrap(), own_before);
}

#[tokio::test]
async fn authorization_matrix() {
    let app = TestApp::spawn().await;
    let t = tree(&app).await;
    let facility = app.facility().await;
    let personas: [(&str, Option<&TestUser>); 6] = [
        ("anonymous", None),
        ("field", Some(&t.field)),
        ("supervisor", Some(&t.supervisor)),
        ("backstopper", Some(&t.backstopper)),
        ("unrelated", Some(&t.unrelated)),
        ("admin", Some(&t.admin)),
    ];
    let w = t.worker.id;
    type Case = (Method, String, Option<Value>, [u16; 6]);
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            "/api/users/me".into(),
            None,
            [401, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            format!("/api/users/{w}"),
            None,
            [401, 404, 200, 200, 404, 200],
        ),
        (
            Method::PATCH,
            format!("/api/users/{w}"),
            Some(json!({"facility_id": facility})),
            [401, 404, 200, 200, 404, 200],
        ),
        (
            Method::GET,
            "/api/users".into(),
            None,
            [401, 403, 200, 200, 200, 200],
        ),
        (
            Method::POST,
            "/api/users".into(),
            Some(
                json!({"email": "x@example.org", "password": "long enough pass", "first_name": "X", "last_name": "Y", "role": "focal"}),
            ),
            [401, 403, 403, 403, 403, 201],
        ),
        (
            Method::GET,
            "/api/activities".into(),
            None,
            [401, 403, 403, 403, 403, 200],
        ),
        (
            Method::GET,
            "/api/admin/system".into(),
            None,
            [401, 403, 403, 403, 403, 200],
        ),
        (
            Method::GET,
            format!("/api/users/{}", uuid::Uuid::new_v4()),
            None,
            [401, 404, 404, 404, 404, 404],
        ),
        (
            Method::GET,
            "/api/sync/conflicts".into(),
            None,
            [401, 403, 403, 403, 403, 200],
        ),
        (
            Method::POST,
            format!("/api/sync/conflicts/{}/resolve", uuid::Uuid::new_v4()),
            Some(json!({"keep": "server"})),
            [401, 403, 403, 403, 403, 404],
        ),
        (
            Method::GET,
            "/api/facilities/imports".into(),
            None,
            [401, 403, 403, 403, 403, 200],
        ),
        // A route the caller may not use refuses them before reading what they sent.
        (
            Method::POST,
            "/api/facilities".into(),
            Some(json!({})),
            [401, 403, 403, 403, 403, 422],
        ),
        (
            Method::PATCH,
            format!("/api/facilities/{facility}"),
            Some(json!({"latitude": 100})),
            [401, 403, 403, 403, 403, 422],
        ),
        (
            Method::GET,
            "/api/activities?no_such_filter=1".into(),
            None,
            [401, 403, 403, 403, 403, 400],
        ),
        (
            Method::GET,
            "/api/attendance/summary?tz=Mars/Olympus".into(),
            None,
            [401, 403, 422, 422, 422, 422],
        ),
    ];
    for (method, path, body, expected) in &cases {
        for ((name, user), want) in personas.iter().zip(expected) {
            let mut request = app.request(method.clone(), path);
            if let Some(user) = user {
                request = request.bearer_auth(&user.token);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let (status, response) = send(request).await;
            assert_eq!(
                status.as_u16(),
                *want,
                "{method} {path} as {name}: {response}"
            );
        }
    }

    // Approval or rejection of a pending applicant who named the supervisor: one applicant
    // per persona and decision.
    let expected = [401, 404, 200, 403, 404, 200];
    for decision in ["approve", "reject"] {
        for ((name, user), want) in personas.iter().zip(expected) {
            let (pending, _) = app
                .insert_user("focal", "pending", Some(t.supervisor.id), None)
                .await;
            let mut request = app.post(&format!("/api/users/{pending}/{decision}"));
            if let Some(user) = user {
                request = request.bearer_auth(&user.token);
            }
            let (status, response) = send(request).await;
            assert_eq!(status.as_u16(), want, "{decision} as {name}: {response}");
            let status: String = sqlx::query_scalar("SELECT status FROM users WHERE id = $1")
                .bind(pending)
                .fetch_one(&app.db)
                .await
                .unwrap();
            let decided = if decision == "approve" {
                "active"
            } else {
                "inactive"
            };
            let expected = if want == 200 { decided } else { "pending" };
            assert_eq!(status, expected, "{decision} as {name}");
        }
    }

    // Deactivation is the admin's alone; the others change nothing.
    let expected = [401, 403, 403, 403, 403, 204];
    for ((name, user), want) in personas.iter().zip(expected) {
        let mut request = app.delete(&format!("/api/users/{}", t.other_worker.id));
        if let Some(user) = user {
            request = request.bearer_auth(&user.token);
        }
        let (status, response) = send(request).await;
        assert_eq!(status.as_u16(), want, "delete as {name}: {response}");
        let status: String = sqlx::query_scalar("SELECT status FROM users WHERE id = $1")
            .bind(t.other_worker.id)
            .fetch_one(&app.db)
            .await
            .unwrap();
        let expected = if want == 204 { "inactive" } else { "active" };
        assert_eq!(status, expected, "delete as {name}");
    }
}

#[tokio::test]
async fn logins_and_wrong_passwords_leave_the_accounts_updated_at_alone() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let worker = app.user("focal", None).await;
    let updated_at = || async {
        let (status, body) = send(
            app.get(&format!("/api/users/{}", worker.id))
                .bearer_auth(&admin.token),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["updated_at"].clone()
    };
    let before = updated_at().await;
    app.login(&worker.email, "wrong-password-here").await;
    assert_eq!(
        app.login(&worker.email, crate::helpers::PASSWORD).await.0,
        StatusCode::OK
    );
    assert_eq!(updated_at().await, before);
    let (status, _) = send(
        app.patch("/api/users/me")
            .bearer_auth(&worker.token)
            .json(&json!({"first_name": "Renamed"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(updated_at().await, before);
}

#[tokio::test]
async fn the_trail_shows_what_each_edit_changed_from_and_to() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let worker = app.user("focal", None).await;
    let elsewhere = app.facility_at(-1.95, 30.06).await;
    let latest = |entity: String| {
        let app = &app;
        let token = admin.token.clone();
        async move {
            let (status, body) = send(
                app.get(&format!("/api/activities?{entity}&per_page=1"))
                    .bearer_auth(&token),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["data"][0]["details"].clone()
        }
    };
    let before: (Option<String>, Option<uuid::Uuid>) =
        sqlx::query_as("SELECT phone, facility_id FROM users WHERE id = $1")
            .bind(worker.id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    let (status, body) = send(
        app.patch(&format!("/api/users/{}", worker.id))
            .bearer_auth(&admin.token)
            .json(&json!({"phone": "+250 788 000 111", "facility_id": elsewhere, "first_name": worker_first(&app, worker.id).await})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let details = latest(format!("action=user.update&entity_id={}", worker.id)).await;
    assert_eq!(
        details["changes"],
        json!({
            "phone": {"from": before.0, "to": "+250 788 000 111"},
            "facility_id": {"from": before.1, "to": elsewhere},
        }),
        "a name sent unchanged is not a change: {details}"
    );
    assert_eq!(
        details["fields"],
        json!(["first_name", "phone", "facility_id"])
    );

    // One's own edit.
    let (status, body) = send(
        app.patch("/api/users/me")
            .bearer_auth(&worker.token)
            .json(&json!({"phone": null})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let details = latest(format!("action=user.update&entity_id={}", worker.id)).await;
    assert_eq!(
        (details["self"].clone(), details["changes"].clone()),
        (
            json!(true),
            json!({"phone": {"from": "+250 788 000 111", "to": null}})
        )
    );
    assert!(!details.to_string().contains("argon2"), "{details}");

    // A facility's edit.
    let (status, body) = send(
        app.patch(&format!("/api/facilities/{elsewhere}"))
            .bearer_auth(&admin.token)
            .json(&json!({"geofence_radius_m": 350})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let details = latest(format!("action=facility.update&entity_id={elsewhere}")).await;
    assert_eq!(
        details["changes"]["geofence_radius_m"]["to"],
        json!(350),
        "{details}"
    );
    assert!(
        details["changes"]["geofence_radius_m"]["from"].is_number(),
        "{details}"
    );
    // Deactivated, then deactivated again: one change, recorded once.
    for _ in 0..2 {
        let (status, _) = send(
            app.delete(&format!("/api/facilities/{elsewhere}"))
                .bearer_auth(&admin.token),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let details = latest(format!("action=facility.deactivate&entity_id={elsewhere}")).await;
    assert_eq!(
        details["changes"],
        json!({"status": {"from": "active", "to": "inactive"}})
    );
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM activities WHERE action = 'facility.deactivate'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(recorded, 1);
}

async fn worker_first(app: &TestApp, id: uuid::Uuid) -> String {
    sqlx::query_scalar("SELECT first_name FROM users WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_activity_log_filters_by_actor_action_entity_and_time() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let worker = app.user("focal", None).await;
    app.login(&worker.email, "wrong-password-here").await;
    let (status, body) = send(
        app.patch(&format!("/api/users/{}", worker.id))
            .bearer_auth(&admin.token)
            .json(&json!({"role": "ddo"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let get = |query: String| {
        send(
            app.get(&format!("/api/activities?{query}"))
                .bearer_auth(&admin.token),
        )
    };
    let (status, body) = get("action=auth.login_failed".into()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["total"], 1);
    assert_eq!(body["data"][0]["entity_id"], json!(worker.id));
    assert_eq!(body["data"][0]["ip"], "127.0.0.1");

    let (_, body) = get(format!("user_id={}&action=user.role_change", admin.id)).await;
    assert_eq!(body["total"], 1);
    assert_eq!(body["data"][0]["details"]["from"], "focal");
    assert_eq!(body["data"][0]["details"]["to"], "ddo");
    assert_eq!(body["data"][0]["actor_email"], crate::helpers::ADMIN_EMAIL);

    let (_, body) = get("entity_type=user&per_page=100".into()).await;
    assert!(body["total"].as_i64().unwrap() >= 4, "{body}");
    // Everything done to the worker's account, by anyone or by no one.
    let (_, body) = get(format!("entity_type=user&entity_id={}", worker.id)).await;
    let mut actions: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    actions.sort();
    assert_eq!(
        actions,
        [
            "auth.login",
            "auth.login_failed",
            "user.role_change",
            "user.update"
        ],
        "{body}"
    );
    let (_, body) = get("from=2999-01-01T00:00:00Z".into()).await;
    assert_eq!(body["total"], 0);
    let (status, body) = get("from=yesterday".into()).await;
    assert_invalid(status, &body, "from");
    // Dates and blank bounds, as on exports and summaries.
    let (_, all) = get(String::new()).await;
    let (status, body) = get("from=&to=2999-12-31".into()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total"], all["total"]);
    let (_, body) = get("from=2999-12-31&to=2999-12-31".into()).await;
    assert_eq!(body["total"], 0);
}

#[tokio::test]
async fn two_admins_removing_each_other_at_once_leave_one_admin() {
    for (remove, keep_status) in [
        (Method::DELETE, None),
        (Method::PATCH, Some(json!({"role": "supervisor"}))),
        (Method::PATCH, Some(json!({"status": "suspended"}))),
    ] {
        let app = TestApp::spawn().await;
        let first = app.admin().await;
        let second = app.user("admin", None).await;
        // Both requests are let through at once: each waits for its target's row.
        let mut holder = app.db.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM users WHERE id = ANY($1) FOR UPDATE")
            .bind([first.id, second.id])
            .execute(&mut *holder)
            .await
            .unwrap();
        let request = |actor: &TestUser, target: &TestUser| {
            let builder = app
                .request(remove.clone(), &format!("/api/users/{}", target.id))
                .bearer_auth(&actor.token);
            let builder = match &keep_status {
                Some(body) => builder.json(body),
                None => builder,
            };
            send(builder)
        };
        let release = async {
            app.until_waiting_on_locks(2, "both removals to wait").await;
            holder.commit().await.unwrap();
        };
        let ((one, _), (other, _), ()) =
            tokio::join!(request(&first, &second), request(&second, &first), release);
        let mut statuses = [one.as_u16(), other.as_u16()];
        statuses.sort_unstable();
        let done = if remove == Method::DELETE { 204 } else { 200 };
        assert_eq!(statuses, [done, 409], "{remove} {keep_status:?}");
        let admins: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM users WHERE role = 'admin' AND status = 'active'",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        assert_eq!(admins, 1);
    }
}

#[tokio::test]
async fn two_admins_editing_each_other_at_once_both_succeed() {
    for with_email in [false, true] {
        two_admins_edit_each_other(with_email).await;
    }
}

async fn two_admins_edit_each_other(with_email: bool) {
    let app = TestApp::spawn().await;
    let first = app.admin().await;
    let second = app.user("admin", None).await;
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE id = ANY($1) FOR UPDATE")
        .bind([first.id, second.id])
        .execute(&mut *holder)
        .await
        .unwrap();
    let rename = |actor: &TestUser, target: &TestUser| {
        let mut change = json!({"first_name": "Renamed", "phone": "+250788000111"});
        if with_email {
            change["email"] = json!(format!("renamed.{}", target.email));
        }
        send(
            app.patch(&format!("/api/users/{}", target.id))
                .bearer_auth(&actor.token)
                .json(&change),
        )
    };
    let release = async {
        app.until_waiting_on_locks(2, "both edits to wait").await;
        holder.commit().await.unwrap();
    };
    let ((one, _), (other, _), ()) =
        tokio::join!(rename(&first, &second), rename(&second, &first), release);
    assert_eq!(
        (one, other),
        (StatusCode::OK, StatusCode::OK),
        "with email: {with_email}"
    );
}

#[tokio::test]
async fn a_deactivated_supervisor_takes_no_one_new_but_keeps_the_team_it_had() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let facility = app.facility().await;
    let boss = app.user("supervisor", None).await;
    let worker = app.quick_user("focal", Some(boss.id), facility).await;
    let newcomer = app.quick_user("focal", None, facility).await;
    let (status, body) = send(
        app.delete(&format!("/api/users/{}", boss.id))
            .bearer_auth(&admin.token),
    )
    .await;
    assert!(status.is_success(), "{status} {body}");
    let patch = |id: uuid::Uuid, body: Value| {
        send(
            app.patch(&format!("/api/users/{id}"))
                .bearer_auth(&admin.token)
                .json(&body),
        )
    };

    let (status, body) = patch(newcomer.id, json!({"supervisor_id": boss.id})).await;
    assert_invalid(status, &body, "supervisor_id");
    let (status, body) = send(app.post("/api/auth/register").json(&json!({
        "email": "new.nurse@example.org", "password": "a long enough passphrase",
        "first_name": "New", "last_name": "Nurse", "facility_id": facility,
        "supervisor_id": boss.id,
    })))
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    let supervised: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE supervisor_id = $1")
        .bind(boss.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(supervised, 1);
    // An edit of the worker who has them, sending the supervisor back unchanged, still applies.
    let (status, body) = patch(
        worker.id,
        json!({"first_name": "Renamed", "supervisor_id": boss.id}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// An admin's move of `moved` (the worker, or a team lead above them) to `next_boss` is under
/// way while `boss` sets the worker's facility: the move holds the tree (a move through the API
/// takes its lock first) or only the worker's row, and commits once the edit waits. Asserts the
/// edit answers 404 and the worker keeps their facility.
async fn edit_racing_a_move(
    app: &TestApp,
    boss: &TestUser,
    (worker, facility): (uuid::Uuid, uuid::Uuid),
    (moved, next_boss): (uuid::Uuid, uuid::Uuid),
    holds_tree: bool,
) {
    let elsewhere = app.facility().await;
    let mut mover = app.db.begin().await.unwrap();
    let hold = if holds_tree {
        "SELECT pg_advisory_xact_lock(hashtext('users.supervisor_id')), $1::uuid"
    } else {
        "SELECT 1 FROM users WHERE id = $1 FOR UPDATE"
    };
    sqlx::query(hold)
        .bind(worker)
        .execute(&mut *mover)
        .await
        .unwrap();
    let edit = send(
        app.patch(&format!("/api/users/{worker}"))
            .bearer_auth(&boss.token)
            .json(&json!({ "facility_id": elsewhere })),
    );
    let move_commits = async {
        app.until_waiting_on_locks(1, "the supervisor's edit waits for the move")
            .await;
        sqlx::query("UPDATE users SET supervisor_id = $2 WHERE id = $1")
            .bind(moved)
            .bind(next_boss)
            .execute(&mut *mover)
            .await
            .unwrap();
        mover.commit().await.unwrap();
    };
    let ((status, body), ()) = tokio::join!(edit, move_commits);

    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let kept: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT facility_id FROM users WHERE id = $1")
            .bind(worker)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(kept, Some(facility));
}

#[tokio::test]
async fn a_supervisors_edit_of_someone_moved_away_meanwhile_changes_nothing() {
    let app = TestApp::spawn().await;
    let boss = app.user("supervisor", None).await;
    let next_boss = app.user("supervisor", None).await;
    let facility = app.facility().await;
    let worker = app.quick_user("focal", Some(boss.id), facility).await;
    let moved = (worker.id, next_boss.id);
    edit_racing_a_move(&app, &boss, (worker.id, facility), moved, false).await;
}

#[tokio::test]
async fn a_supervisors_edit_waits_for_a_move_higher_up_the_tree_and_then_changes_nothing() {
    let app = TestApp::spawn().await;
    let boss = app.user("supervisor", None).await;
    let next_boss = app.user("supervisor", None).await;
    let facility = app.facility().await;
    let team_lead = app.quick_user("supervisor", Some(boss.id), facility).await;
    let worker = app.quick_user("focal", Some(team_lead.id), facility).await;
    // The worker's own row is never touched: only the tree's lock makes the edit wait.
    let moved = (team_lead.id, next_boss.id);
    edit_racing_a_move(&app, &boss, (worker.id, facility), moved, true).await;
}

#[tokio::test]
async fn no_one_is_placed_under_a_supervisor_who_ranks_below_them() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let supervisor = app.user("supervisor", None).await;
    let backstopper = app.user("backstopper", None).await;
    let worker = app.user("focal", Some(supervisor.id)).await;
    let refused = |status: StatusCode, body: &Value| {
        assert_invalid(status, body, "supervisor_id");
        assert!(
            body["error"]["details"]["supervisor_id"]
                .to_string()
                .contains("below the user's role"),
            "{body}"
        );
    };
    // An admin created under a supervisor, who could then approve or move them.
    let new_user = |role: &str, supervisor: uuid::Uuid| {
        json!({"email": format!("{role}.{supervisor}@example.org"), "password": "a long enough passphrase",
               "first_name": "New", "last_name": "User", "role": role, "status": "pending",
               "supervisor_id": supervisor})
    };
    let (status, body) = send(
        app.post("/api/users")
            .bearer_auth(&admin.token)
            .json(&new_user("admin", supervisor.id)),
    )
    .await;
    refused(status, &body);
    // A team lead under a supervisor is a supervisor under a supervisor: allowed.
    let (status, body) = send(
        app.post("/api/users")
            .bearer_auth(&admin.token)
            .json(&new_user("supervisor", supervisor.id)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Promoted above the supervisor they keep, or moved under one below them.
    let patch = |id: uuid::Uuid, body: Value| {
        send(
            app.patch(&format!("/api/users/{id}"))
                .bearer_auth(&admin.token)
                .json(&body),
        )
    };
    let (status, body) = patch(worker.id, json!({"role": "backstopper"})).await;
    refused(status, &body);
    let (status, body) = patch(backstopper.id, json!({"supervisor_id": supervisor.id})).await;
    refused(status, &body);
    // An edit that sends back the role and supervisor a user already has is not checked
    // again (a pair from before the rule).
    let elder = app.user("backstopper", Some(supervisor.id)).await;
    let (status, body) = patch(
        elder.id,
        json!({"role": "backstopper", "supervisor_id": supervisor.id, "first_name": "Elder"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Both at once, under someone high enough: allowed.
    let (status, body) = patch(
        worker.id,
        json!({"role": "backstopper", "supervisor_id": admin.id}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Demoted below a user they supervise.
    let (status, body) = patch(supervisor.id, json!({"supervisor_id": worker.id})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let peer = app.user("backstopper", Some(worker.id)).await;
    let (status, body) = patch(worker.id, json!({"role": "supervisor"})).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let role = || {
        sqlx::query_scalar::<_, String>("SELECT role FROM users WHERE id = $1")
            .bind(worker.id)
            .fetch_one(&app.db)
    };
    assert_eq!(role().await.unwrap(), "backstopper");
    // Once the peer has another supervisor, a supervisor may supervise a supervisor.
    let (status, body) = patch(peer.id, json!({"supervisor_id": admin.id})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = patch(worker.id, json!({"role": "supervisor"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(role().await.unwrap(), "supervisor");
}

#[tokio::test]
async fn deactivating_a_user_again_changes_and_records_nothing_more() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let user = app.user("focal", None).await;
    let deactivate = || {
        send(
            app.delete(&format!("/api/users/{}", user.id))
                .bearer_auth(&admin.token),
        )
    };
    let version = || async {
        sqlx::query_scalar::<_, i32>("SELECT token_version FROM users WHERE id = $1")
            .bind(user.id)
            .fetch_one(&app.db)
            .await
            .unwrap()
    };
    assert_eq!(deactivate().await.0, StatusCode::NO_CONTENT);
    let after_once = version().await;
    assert_eq!(deactivate().await.0, StatusCode::NO_CONTENT);
    assert_eq!(version().await, after_once);
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM activities WHERE action = 'user.deactivate' AND entity_id = $1",
    )
    .bind(user.id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(recorded, 1);
}

#[tokio::test]
async fn an_edit_sending_back_what_a_user_has_writes_and_records_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let worker = app.user("focal", None).await;
    let stamp = || async {
        sqlx::query_as::<_, (chrono::DateTime<chrono::Utc>, i64)>(
            "SELECT updated_at, xmin::text::bigint FROM users WHERE id = $1",
        )
        .bind(worker.id)
        .fetch_one(&app.db)
        .await
        .unwrap()
    };
    let before = stamp().await;
    let first = worker_first(&app, worker.id).await;
    let (status, body) = send(
        app.patch(&format!("/api/users/{}", worker.id))
            .bearer_auth(&admin.token)
            .json(&json!({"email": worker.email.to_uppercase(), "first_name": first, "role": "focal", "status": "active"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["first_name"], json!(first), "{body}");
    let (status, body) = send(
        app.patch("/api/users/me")
            .bearer_auth(&worker.token)
            .json(&json!({"first_name": first})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], json!(worker.id), "{body}");
    assert_eq!(stamp().await, before, "the row was written again");
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM activities WHERE action = 'user.update' AND entity_id = $1",
    )
    .bind(worker.id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(recorded, 0);
    // The same worker's edit that does change something is still written and recorded.
    let (status, _) = send(
        app.patch("/api/users/me")
            .bearer_auth(&worker.token)
            .json(&json!({"first_name": format!("{first}x")})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(stamp().await, before);
}
