//! Registration, login, lockout, tokens, refresh rotation, logout and rate limits.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_EMAIL, JWT_SECRET, PASSWORD, TestApp, assert_error, assert_invalid, send,
};

fn registration(facility: uuid::Uuid) -> Value {
    json!({
        "email": "Amina.Uwase@Example.org",
        "password": "a long enough passphrase",
        "first_name": "Amina",
        "last_name": "Uwase",
        "phone": "+250788123456",
        "facility_id": facility,
    })
}

/// Logs out the session of `token` with the access token `access`, as a device does.
async fn logout<T: serde::Serialize + ?Sized>(
    app: &TestApp,
    access: &str,
    token: &T,
) -> StatusCode {
    send(
        app.post("/api/auth/logout")
            .bearer_auth(access)
            .json(&json!({ "refresh_token": token })),
    )
    .await
    .0
}

/// Exchanges a refresh token, as a device does.
async fn refresh<T: serde::Serialize + ?Sized>(app: &TestApp, token: &T) -> (StatusCode, Value) {
    send(
        app.post("/api/auth/refresh")
            .json(&json!({ "refresh_token": token })),
    )
    .await
}

#[tokio::test]
async fn a_registered_account_cannot_log_in_until_approved() {
    let app = TestApp::spawn().await;
    let facility = app.facility().await;

    let (status, body) = send(app.post("/api/auth/register").json(&registration(facility))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["user"]["status"], "pending");
    assert_eq!(body["user"]["email"], "amina.uwase@example.org");
    assert_eq!(body["user"]["role"], "data_clerk");
    assert_eq!(body["user"]["facility"]["council"]["name"], "Gasabo");
    assert_eq!(
        body["user"]["facility"]["council"]["region"]["name"],
        "Kigali City"
    );
    assert!(!body.to_string().contains("password"), "{body}");
    let id = body["user"]["id"].as_str().unwrap().to_string();

    let (status, body) = app
        .login("amina.uwase@example.org", "a long enough passphrase")
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "account_pending");
    assert_eq!(
        body["error"]["details"]["status"],
        json!(["pending"]),
        "{body}"
    );

    let admin = app.admin().await;
    let (status, body) = send(
        app.post(&format!("/api/users/{id}/approve"))
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["status"], "active");

    let (status, body) = app
        .login("AMINA.UWASE@example.org", "a long enough passphrase")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 86400);
    let actions = app.actions().await;
    for action in ["user.register", "user.approve", "auth.login"] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} not audited: {actions:?}"
        );
    }
}

#[tokio::test]
async fn a_rejected_registration_stays_locked_out() {
    let app = TestApp::spawn().await;
    let facility = app.facility().await;
    let (_, body) = send(app.post("/api/auth/register").json(&registration(facility))).await;
    let id = body["user"]["id"].as_str().unwrap().to_string();
    let admin = app.admin().await;
    let (status, body) = send(
        app.post(&format!("/api/users/{id}/reject"))
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user"]["status"], "inactive");
    let (status, body) = app
        .login("amina.uwase@example.org", "a long enough passphrase")
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(
        body["error"]["details"]["status"],
        json!(["inactive"]),
        "{body}"
    );
    let reason: Option<String> = sqlx::query_scalar(
        "SELECT details->>'reason' FROM activities WHERE action = 'auth.login_failed'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(reason.as_deref(), Some("account_inactive"));
    // Deciding twice is a conflict.
    let (status, body) = send(
        app.post(&format!("/api/users/{id}/approve"))
            .bearer_auth(&admin.token),
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
}

#[tokio::test]
async fn registration_can_be_closed() {
    let app = TestApp::spawn_with(|env| {
        env.insert("REGISTRATION".into(), "closed".into());
    })
    .await;
    let facility = app.facility().await;
    let (status, body) = send(app.post("/api/auth/register").json(&registration(facility))).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("registration is closed"),
        "{body}"
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 1, "only the admin exists");
}

#[tokio::test]
async fn invalid_registrations_are_refused_naming_the_field_and_create_nothing() {
    let app = TestApp::spawn().await;
    let facility = app.facility().await;
    let (supervisor_field_worker, _) = app
        .insert_user("focal", "active", None, Some(facility))
        .await;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("bad email", json!({"email": "not-an-email"}), "email"),
        ("short password", json!({"password": "short"}), "password"),
        (
            "password equal to email",
            json!({"email": "long.name@example.org", "password": "long.name@example.org"}),
            "password",
        ),
        (
            "blank first name",
            json!({"first_name": "  "}),
            "first_name",
        ),
        ("admin role", json!({"role": "admin"}), "role"),
        ("supervisor role", json!({"role": "supervisor"}), "role"),
        (
            "unknown facility",
            json!({"facility_id": uuid::Uuid::new_v4()}),
            "facility_id",
        ),
        (
            "supervisor not a supervisor",
            json!({"supervisor_id": supervisor_field_worker}),
            "supervisor_id",
        ),
        ("unknown field", json!({"status": "active"}), "status"),
        ("unknown role", json!({"role": "overlord"}), "role"),
    ];
    for (name, patch, field) in cases {
        let mut body = registration(facility);
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, response) = send(app.post("/api/auth/register").json(&body)).await;
        assert_error(
            status,
            &response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert!(
            response["error"]["details"][field].is_array(),
            "{name}: {field} not named in {response}"
        );
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 2, "nothing was created");
}

#[tokio::test]
async fn a_second_registration_with_the_same_email_is_a_conflict() {
    let app = TestApp::spawn().await;
    let facility = app.facility().await;
    let (status, _) = send(app.post("/api/auth/register").json(&registration(facility))).await;
    assert_eq!(status, StatusCode::CREATED);
    let mut again = registration(facility);
    again["email"] = json!("AMINA.uwase@example.org");
    let (status, body) = send(app.post("/api/auth/register").json(&again)).await;
    assert_error(status, &body, StatusCode::CONFLICT, "duplicate");
}

#[tokio::test]
async fn unknown_email_and_wrong_password_get_the_same_answer() {
    let app = TestApp::spawn().await;
    let (s1, b1) = app.login(ADMIN_EMAIL, "wrong-password-1").await;
    let (s2, b2) = app.login("nobody@test.example", "wrong-password-1").await;
    assert_error(s1, &b1, StatusCode::UNAUTHORIZED, "invalid_credentials");
    assert_error(s2, &b2, StatusCode::UNAUTHORIZED, "invalid_credentials");
    assert_eq!(b1["error"]["message"], b2["error"]["message"]);
    let failures: i64 =
        sqlx::query_scalar("SELECT count(*) FROM activities WHERE action = 'auth.login_failed'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(failures, 2);
}

#[tokio::test]
async fn a_password_typed_into_the_email_field_is_not_kept_in_the_audit_trail() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    // Typed into the email box: a passphrase, a password that reads as an address to the rules
    // (for want of a dot in its domain), an unknown address, and an account's own.
    for email in [
        "Correct Horse Battery Staple",
        "Summer@2026",
        "nobody@test.example",
        &user.email,
    ] {
        let (status, body) = app.login(email, "wrong-password-1").await;
        assert_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        );
    }
    // Each refusal is in the trail: an unknown address masked, an account's as it is.
    let recorded: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT details->>'email', details->>'reason' FROM activities
         WHERE action = 'auth.login_failed' ORDER BY id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let unknown = Some("unknown_email".to_string());
    assert_eq!(
        recorded,
        [
            (None, unknown.clone()),
            (None, unknown.clone()),
            (Some("n***@test.example".into()), unknown),
            (Some(user.email.clone()), Some("wrong_password".into())),
        ]
    );
}

#[tokio::test]
async fn five_failures_lock_the_account_even_against_the_right_password_until_it_expires() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    for _ in 0..5 {
        let (status, body) = app.login(&user.email, "not-the-password").await;
        assert_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        );
    }
    let response = app
        .post("/api/auth/login")
        .json(&json!({"email": user.email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::LOCKED);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((800..=900).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "account_locked");
    assert!(app.actions().await.iter().any(|a| a == "auth.lockout"));
    // Every attempt is in the audit trail with its reason, those refused by the lock too.
    let reasons: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT details->>'reason' FROM activities
         WHERE action = 'auth.login_failed' AND entity_id = $1 ORDER BY id",
    )
    .bind(user.id)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let mut expected = vec![Some("wrong_password".to_string()); 5];
    expected.push(Some("account_locked".to_string()));
    assert_eq!(reasons, expected);

    // The lock runs out: the right password works and the count starts again.
    sqlx::query("UPDATE users SET locked_until = now() - interval '1 second' WHERE id = $1")
        .bind(user.id)
        .execute(&app.db)
        .await
        .unwrap();
    let (status, _) = app.login(&user.email, PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    let (count, locked): (i32, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT failed_login_count, locked_until FROM users WHERE id = $1")
            .bind(user.id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((count, locked), (0, None));
}

#[tokio::test]
async fn guesses_sent_at_once_get_no_more_password_checks_than_the_lockout_allows() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    let wrong: Vec<String> = (0..20).map(|i| format!("guess number {i}")).collect();
    let guesses = wrong.iter().map(|guess| app.login(&user.email, guess));
    let statuses: Vec<StatusCode> = futures::future::join_all(guesses)
        .await
        .into_iter()
        .map(|(status, _)| status)
        .collect();
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::LOCKED)
        .count();
    assert_eq!((checked, refused), (5, 15), "{statuses:?}");
    assert_eq!(app.login(&user.email, PASSWORD).await.0, StatusCode::LOCKED);
}

#[tokio::test]
async fn wrong_current_passwords_at_a_password_change_lock_the_account_too() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    let change = |current: &str| {
        app.post("/api/users/me/password")
            .bearer_auth(&user.token)
            .json(&json!({"current_password": current, "new_password": "a brand new passphrase"}))
    };
    for _ in 0..5 {
        let (status, body) = send(change("not-the-password")).await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
    }
    // Even the right password: at the change and at login.
    let (status, body) = send(change(PASSWORD)).await;
    assert_error(status, &body, StatusCode::LOCKED, "account_locked");
    assert_eq!(app.login(&user.email, PASSWORD).await.0, StatusCode::LOCKED);
    let reasons: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT details->>'reason' FROM activities
         WHERE action = 'user.password_change_failed' ORDER BY id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let mut expected = vec![Some("wrong_password".to_string()); 5];
    expected.push(Some("account_locked".to_string()));
    assert_eq!(reasons, expected, "the refused change is in the trail too");
    assert!(app.actions().await.iter().any(|a| a == "auth.lockout"));
}

#[tokio::test]
async fn a_password_change_refused_for_its_shape_checks_no_password() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    for _ in 0..4 {
        app.login(&user.email, "not-the-password").await;
    }
    // A weak new password, an empty current one: refused as such, whatever the current one.
    for body in [
        json!({"current_password": "not-the-password", "new_password": "short"}),
        json!({"current_password": "", "new_password": "a brand new passphrase"}),
    ] {
        let (status, body) = send(
            app.post("/api/users/me/password")
                .bearer_auth(&user.token)
                .json(&body),
        )
        .await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
    }
    // None of them counted: the fifth guess is still to come.
    assert_eq!(app.login(&user.email, PASSWORD).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_success_resets_the_failure_count() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    for _ in 0..4 {
        app.login(&user.email, "not-the-password").await;
    }
    assert_eq!(app.login(&user.email, PASSWORD).await.0, StatusCode::OK);
    for _ in 0..4 {
        app.login(&user.email, "not-the-password").await;
    }
    assert_eq!(
        app.login(&user.email, PASSWORD).await.0,
        StatusCode::OK,
        "not locked after 4+4"
    );
}

/// Gives the user a hash of `PASSWORD` made with older parameters (OWASP's 19 MiB, 2 passes);
/// the hash.
async fn hash_with_older_parameters(app: &TestApp, user: uuid::Uuid) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let older = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(19 * 1024, 2, 1, None).unwrap(),
    )
    .hash_password(PASSWORD.as_bytes(), &SaltString::generate(&mut OsRng))
    .unwrap()
    .to_string();
    sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
        .bind(&older)
        .bind(user)
        .execute(&app.db)
        .await
        .unwrap();
    older
}

#[tokio::test]
async fn a_password_hashed_with_older_parameters_is_rehashed_at_login_and_sessions_stay() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    let older = hash_with_older_parameters(&app, user.id).await;
    let stored = || async {
        sqlx::query_scalar::<_, String>("SELECT password_hash FROM users WHERE id = $1")
            .bind(user.id)
            .fetch_one(&app.db)
            .await
            .unwrap()
    };

    // A wrong password changes nothing.
    assert_eq!(
        app.login(&user.email, "not-the-password").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(stored().await, older);
    assert_eq!(app.login(&user.email, PASSWORD).await.0, StatusCode::OK);
    let upgraded = stored().await;
    assert!(
        upgraded.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"),
        "{upgraded}"
    );
    assert_eq!(app.login(&user.email, PASSWORD).await.0, StatusCode::OK);
    assert_eq!(stored().await, upgraded, "hashed again only once");
    // Not a password change: the token from before still works.
    let (status, _) = send(app.get("/api/users/me").bearer_auth(&user.token)).await;
    assert_eq!(status, StatusCode::OK);
}

fn claims_for(user_id: uuid::Uuid, role: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "sub": user_id, "role": role, "iat": now, "exp": now + 3600,
        "iss": "field-attendance", "aud": "field-attendance-api",
        "jti": uuid::Uuid::new_v4(), "ver": 0,
    })
}

fn sign(claims: &Value, alg: Algorithm, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn forged_tampered_and_expired_tokens_are_refused_with_401() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    let good = claims_for(user.id, "focal");
    // Sanity: a token signed like the service's own is accepted.
    let (status, _) = send(app.get("/api/users/me").bearer_auth(sign(
        &good,
        Algorithm::HS256,
        JWT_SECRET,
    )))
    .await;
    assert_eq!(status, StatusCode::OK);

    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let none_token = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(good.to_string())
    );
    let tampered_role = {
        let token = sign(&good, Algorithm::HS256, JWT_SECRET);
        let parts: Vec<&str> = token.split('.').collect();
        let payload = URL_SAFE_NO_PAD.encode(with("role", json!("admin")).to_string());
        format!("{}.{}.{}", parts[0], payload, parts[2])
    };
    let now = chrono::Utc::now().timestamp();
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", none_token, "invalid_token"),
        (
            "HS384",
            sign(&good, Algorithm::HS384, JWT_SECRET),
            "invalid_token",
        ),
        (
            "wrong secret",
            sign(
                &good,
                Algorithm::HS256,
                "another-secret-that-is-long-enough-0000",
            ),
            "invalid_token",
        ),
        (
            "expired",
            sign(
                &with("exp", json!(now - 3600)),
                Algorithm::HS256,
                JWT_SECRET,
            ),
            "token_expired",
        ),
        (
            "wrong issuer",
            sign(
                &with("iss", json!("someone-else")),
                Algorithm::HS256,
                JWT_SECRET,
            ),
            "invalid_token",
        ),
        (
            "wrong audience",
            sign(
                &with("aud", json!("another-api")),
                Algorithm::HS256,
                JWT_SECRET,
            ),
            "invalid_token",
        ),
        ("tampered role", tampered_role, "invalid_token"),
        ("garbage", "not.a.jwt".to_string(), "invalid_token"),
        (
            "unknown user",
            sign(
                &with("sub", json!(uuid::Uuid::new_v4())),
                Algorithm::HS256,
                JWT_SECRET,
            ),
            "invalid_token",
        ),
        (
            "old token version",
            sign(&with("ver", json!(-1)), Algorithm::HS256, JWT_SECRET),
            "invalid_token",
        ),
    ];
    for (name, token, code) in cases {
        let response = app
            .get("/api/users/me")
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{name}");
        assert!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"),
            "{name}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
    }
    let (status, body) = send(app.get("/api/users/me")).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_revokes_the_whole_chain() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;

    let (status, first) = refresh(&app, &user.refresh_token).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let second_refresh = first["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(second_refresh, user.refresh_token);
    let (status, _) = send(
        app.get("/api/users/me")
            .bearer_auth(first["access_token"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // The rotated token is presented again: refused, and its descendants die with it.
    let (status, body) = refresh(&app, &user.refresh_token).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
    let (status, body) = refresh(&app, &second_refresh).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
    assert!(
        app.actions()
            .await
            .iter()
            .any(|a| a == "auth.refresh_reuse")
    );

    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM refresh_tokens")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert!(
        stored.iter().all(|h| h.len() == 32),
        "stored as SHA-256 hashes"
    );
}

#[tokio::test]
async fn an_expired_refresh_token_is_refused_and_stays_unrotated() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    sqlx::query(
        "UPDATE refresh_tokens SET expires_at = now() - interval '1 second' WHERE user_id = $1",
    )
    .bind(user.id)
    .execute(&app.db)
    .await
    .unwrap();
    let (status, body) = refresh(&app, &user.refresh_token).await;
    // Not `token_expired`, which tells a device to refresh: this one must log in again.
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
    let rotated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM refresh_tokens WHERE user_id = $1 AND rotated_at IS NOT NULL",
    )
    .bind(user.id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(rotated, 0, "an expired token is not rotated");
    let (status, body) = refresh(&app, &user.refresh_token).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
    assert!(
        !app.actions()
            .await
            .iter()
            .any(|a| a == "auth.refresh_reuse"),
        "presenting it again is no theft"
    );
}

#[tokio::test]
async fn logout_revokes_the_refresh_token() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    let status = logout(&app, &user.token, &user.refresh_token).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = refresh(&app, &user.refresh_token).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
    // A token that was revoked, never rotated, is no sign of theft: no alarm in the trail.
    assert!(
        !app.actions()
            .await
            .iter()
            .any(|a| a == "auth.refresh_reuse")
    );
}

#[tokio::test]
async fn a_logout_needs_a_live_access_token_as_every_route_but_the_open_ones() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    let expired = {
        let mut claims = claims_for(user.id, "focal");
        let now = chrono::Utc::now().timestamp();
        (claims["iat"], claims["exp"]) = (json!(now - 7200), json!(now - 3600));
        sign(&claims, Algorithm::HS256, JWT_SECRET)
    };
    let body = json!({ "refresh_token": user.refresh_token });
    let (status, answer) = send(app.post("/api/auth/logout").json(&body)).await;
    assert_error(status, &answer, StatusCode::UNAUTHORIZED, "unauthenticated");
    // Past its time: the device refreshes, then logs out.
    let (status, answer) = send(
        app.post("/api/auth/logout")
            .bearer_auth(&expired)
            .json(&body),
    )
    .await;
    assert_error(status, &answer, StatusCode::UNAUTHORIZED, "token_expired");
    let (status, renewed) = refresh(&app, &user.refresh_token).await;
    assert_eq!(status, StatusCode::OK, "the session goes on: {renewed}");
    let status = logout(
        &app,
        renewed["access_token"].as_str().unwrap(),
        &renewed["refresh_token"],
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = refresh(&app, &renewed["refresh_token"]).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
}

#[tokio::test]
async fn a_logout_with_another_users_refresh_token_leaves_their_session_alone() {
    let app = TestApp::spawn().await;
    let (owner, other) = (app.user("focal", None).await, app.user("focal", None).await);
    let status = logout(&app, &other.token, &owner.refresh_token).await;
    // The same answer as for an unknown token: nothing says whose it is.
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = refresh(&app, &owner.refresh_token).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the owner's session goes on: {body}"
    );
    assert!(!app.actions().await.iter().any(|a| a == "auth.logout"));
}

#[tokio::test]
async fn a_reused_refresh_token_ends_the_access_tokens_of_the_stolen_chain() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    // The user's phone, logged in apart.
    let (status, phone) = app.login(&user.email, PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    // A thief refreshes first with a copy of the token.
    let (status, stolen) = refresh(&app, &user.refresh_token).await;
    assert_eq!(status, StatusCode::OK);
    let thief_access = stolen["access_token"].as_str().unwrap();
    // The owner presents it next: reuse.
    let (status, _) = refresh(&app, &user.refresh_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, body) = send(app.get("/api/users/me").bearer_auth(thief_access)).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
    // The phone's access token ends too, but its own chain still refreshes.
    let phone_access = phone["access_token"].as_str().unwrap();
    let (status, _) = send(app.get("/api/users/me").bearer_auth(phone_access)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, renewed) = refresh(&app, &phone["refresh_token"]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(
        app.get("/api/users/me")
            .bearer_auth(renewed["access_token"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_thief_who_logs_out_the_stolen_chain_still_loses_their_access_token() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    let me = |token: &str| send(app.get("/api/users/me").bearer_auth(token));
    let (status, stolen) = refresh(&app, &user.refresh_token).await;
    assert_eq!(status, StatusCode::OK, "{stolen}");
    let thief_access = stolen["access_token"].as_str().unwrap();
    // The thief ends the chain, hoping the owner's reuse finds nothing live to call theft.
    let status = logout(&app, thief_access, &stolen["refresh_token"]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = refresh(&app, &user.refresh_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = me(thief_access).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");

    // Told once per chain: the owner's new login survives the old token coming back again.
    let (status, login) = app.login(&user.email, PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let (status, _) = refresh(&app, &user.refresh_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = me(login["access_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The owner logging out with the token the thief rotated is the same alarm.
    let (status, stolen) = refresh(&app, &login["refresh_token"]).await;
    assert_eq!(status, StatusCode::OK, "{stolen}");
    let status = logout(
        &app,
        login["access_token"].as_str().unwrap(),
        &login["refresh_token"],
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = me(stolen["access_token"].as_str().unwrap()).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
}

#[tokio::test]
async fn a_reuse_whose_tokens_were_never_ended_ends_them_when_it_comes_back() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    let (status, stolen) = refresh(&app, &user.refresh_token).await;
    assert_eq!(status, StatusCode::OK, "{stolen}");
    // A reuse was found before, and the request that found it failed after its commit.
    sqlx::query(
        "INSERT INTO refresh_families_reused (family_id)
         SELECT family_id FROM refresh_tokens WHERE user_id = $1 LIMIT 1",
    )
    .bind(user.id)
    .execute(&app.db)
    .await
    .unwrap();
    let (status, _) = refresh(&app, &user.refresh_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let thief_access = stolen["access_token"].as_str().unwrap();
    let (status, body) = send(app.get("/api/users/me").bearer_auth(thief_access)).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
}

#[tokio::test]
async fn a_reuse_whose_tokens_were_never_ended_has_them_ended_in_the_background() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    let (status, stolen) = refresh(&app, &user.refresh_token).await;
    assert_eq!(status, StatusCode::OK, "{stolen}");
    let thief_access = stolen["access_token"].as_str().unwrap();
    // A reuse found a minute ago, by a request that failed after its commit; and one found just
    // now, whose request is still ending its tokens (stamped ahead, so that however slowly this
    // test runs, no run of the job counts it as left).
    let other = app.user("focal", None).await;
    sqlx::query(
        "INSERT INTO refresh_families_reused (family_id, detected_at)
         SELECT family_id, now() + CASE WHEN user_id = $1 THEN interval '-1 minute'
                                        ELSE interval '1 hour' END
         FROM refresh_tokens WHERE user_id IN ($1, $2) AND rotated_at IS NULL",
    )
    .bind(user.id)
    .bind(other.id)
    .execute(&app.db)
    .await
    .unwrap();
    // (The service's own run of the job may come first.)
    let ended = field_attendance::auth::refresh::end_pending_access_tokens(&app.db)
        .await
        .unwrap();
    assert!(ended.iter().all(|id| *id == user.id), "{ended:?}");
    let left: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT t.user_id FROM refresh_families_reused r JOIN refresh_tokens t USING (family_id)
         WHERE r.ended_at IS NULL",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(left, [other.id]);
    let (status, body) = send(app.get("/api/users/me").bearer_auth(thief_access)).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
    let (status, body) = send(app.get("/api/users/me").bearer_auth(&other.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Once only.
    let ended = field_attendance::auth::refresh::end_pending_access_tokens(&app.db)
        .await
        .unwrap();
    assert!(ended.is_empty(), "{ended:?}");
}

#[tokio::test]
async fn ending_a_stolen_chains_tokens_gives_up_on_an_account_held_elsewhere() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    let (status, stolen) = refresh(&app, &user.refresh_token).await;
    assert_eq!(status, StatusCode::OK, "{stolen}");
    // A reuse found a minute ago, whose request failed after its commit.
    sqlx::query(
        "INSERT INTO refresh_families_reused (family_id, detected_at)
         SELECT family_id, now() - interval '1 minute' FROM refresh_tokens WHERE user_id = $1
         LIMIT 1",
    )
    .bind(user.id)
    .execute(&app.db)
    .await
    .unwrap();
    // A session left open in `psql` holds the account: the job waits only a while (the
    // accounts it had already locked would wait with it), and ends the tokens at a later turn.
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(user.id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let job = field_attendance::auth::refresh::end_pending_access_tokens(&app.db);
    let ran = tokio::time::timeout(std::time::Duration::from_secs(20), job)
        .await
        .expect("the job waited on a held account for good");
    assert!(ran.is_err(), "it gave up: {ran:?}");
    holder.rollback().await.unwrap();
    let ended = field_attendance::auth::refresh::end_pending_access_tokens(&app.db)
        .await
        .unwrap();
    // (Unless the service's own run of the job came first.)
    assert!(ended.iter().all(|id| *id == user.id), "{ended:?}");
    let thief_access = stolen["access_token"].as_str().unwrap();
    let (status, body) = send(app.get("/api/users/me").bearer_auth(thief_access)).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
}

#[tokio::test]
async fn a_reuse_met_while_the_account_is_held_elsewhere_answers_503_and_is_ended_later() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    let (status, stolen) = refresh(&app, &user.refresh_token).await;
    assert_eq!(status, StatusCode::OK, "{stolen}");
    // A session holds the account (shared, as a long report over the user's team might): the
    // reuse is recorded, but ending the chain's access tokens waits only a while.
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR SHARE")
        .bind(user.id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let (status, body) = refresh(&app, &user.refresh_token).await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    holder.rollback().await.unwrap();
    // Left to the job, which ends them (the reuse is older than its 30 s grace here).
    sqlx::query("UPDATE refresh_families_reused SET detected_at = now() - interval '1 minute'")
        .execute(&app.db)
        .await
        .unwrap();
    field_attendance::auth::refresh::end_pending_access_tokens(&app.db)
        .await
        .unwrap();
    let thief_access = stolen["access_token"].as_str().unwrap();
    let (status, body) = send(app.get("/api/users/me").bearer_auth(thief_access)).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
}

#[tokio::test]
async fn logout_with_an_already_rotated_token_ends_the_session_it_came_from() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    let (status, rotated) = refresh(&app, &user.refresh_token).await;
    assert_eq!(status, StatusCode::OK);
    let status = logout(&app, &user.token, &user.refresh_token).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = refresh(&app, &rotated["refresh_token"]).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
}

#[tokio::test]
async fn deactivation_role_change_and_password_change_cut_existing_tokens_off() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let deactivated = app.user("focal", None).await;
    let promoted = app.user("focal", None).await;
    let changer = app.user("focal", None).await;
    let suspended = app.user("focal", None).await;

    let (status, _) = send(
        app.delete(&format!("/api/users/{}", deactivated.id))
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = send(
        app.patch(&format!("/api/users/{}", promoted.id))
            .bearer_auth(&admin.token)
            .json(&json!({"role": "supervisor"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(
        app.post("/api/users/me/password")
            .bearer_auth(&changer.token)
            .json(&json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = send(
        app.patch(&format!("/api/users/{}", suspended.id))
            .bearer_auth(&admin.token)
            .json(&json!({"status": "suspended"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let everyone = [&deactivated, &promoted, &changer, &suspended];
    for user in everyone {
        let (status, body) = send(app.get("/api/users/me").bearer_auth(&user.token)).await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
    }
    // Their refresh tokens are revoked too.
    for user in everyone {
        let (status, _) = refresh(&app, &user.refresh_token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        app.login(&changer.email, "a brand new passphrase").await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.login(&changer.email, PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = app.login(&deactivated.email, PASSWORD).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(
        body["error"]["details"]["status"],
        json!(["inactive"]),
        "{body}"
    );
    let (status, body) = app.login(&suspended.email, PASSWORD).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(
        body["error"]["details"]["status"],
        json!(["suspended"]),
        "{body}"
    );
    let actions = app.actions().await;
    for action in [
        "user.deactivate",
        "user.role_change",
        "user.password_change",
    ] {
        assert!(actions.iter().any(|a| a == action), "{action}: {actions:?}");
    }
}

/// Sends `request` while a password change of `user` (the test's own transaction, as the
/// service writes one: the account, then its refresh tokens) holds the account, and commits the
/// change once the request waits on it. Returns the request's answer and the refresh tokens of
/// the user still valid afterwards.
async fn during_a_password_change(
    app: &TestApp,
    user: uuid::Uuid,
    request: reqwest::RequestBuilder,
) -> ((StatusCode, Value), i64) {
    let mut change = app.db.begin().await.unwrap();
    sqlx::query(
        "UPDATE users SET password_hash = 'changed', token_version = token_version + 1
         WHERE id = $1",
    )
    .bind(user)
    .execute(&mut *change)
    .await
    .unwrap();
    let commit = async {
        app.until_waiting_on_rows(1, "the request waits on the changing account")
            .await;
        sqlx::query("UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL")
            .bind(user)
            .execute(&mut *change)
            .await
            .unwrap();
        change.commit().await.unwrap();
    };
    let (answer, ()) = tokio::join!(send(request), commit);
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM refresh_tokens
         WHERE user_id = $1 AND revoked_at IS NULL AND rotated_at IS NULL",
    )
    .bind(user)
    .fetch_one(&app.db)
    .await
    .unwrap();
    (answer, live)
}

#[tokio::test]
async fn a_login_or_refresh_racing_a_password_change_keeps_no_session() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    // The login checked the old password before the change committed.
    let ((status, body), live) = during_a_password_change(
        &app,
        user.id,
        app.post("/api/auth/login")
            .json(&json!({"email": user.email, "password": PASSWORD})),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    );
    assert_eq!(live, 0);
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(user.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(hash, "changed");

    let other = app.user("focal", None).await;
    let ((status, body), live) = during_a_password_change(
        &app,
        other.id,
        app.post("/api/auth/refresh")
            .json(&json!({"refresh_token": other.refresh_token})),
    )
    .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
    assert_eq!(live, 0);
}

#[tokio::test]
async fn create_admin_resets_an_account_and_ends_its_sessions() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    app.cli(&[
        "create-admin",
        "--email",
        ADMIN_EMAIL,
        "--password",
        "a fresh admin passphrase",
    ]);
    let (status, body) = send(app.get("/api/users/me").bearer_auth(&admin.token)).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
    let (status, body) = refresh(&app, &admin.refresh_token).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
    assert_eq!(
        app.login(ADMIN_EMAIL, "a fresh admin passphrase").await.0,
        StatusCode::OK
    );
    // The seed's first admin is a creation; resetting it a password change; promoting a field
    // worker a password change and a role change; a new account a creation. None has an actor.
    // (Rows of one transaction share their time, and their ids are not ordered within a
    // millisecond: they are compared by action.)
    let worker = app.user("focal", None).await;
    app.cli(&[
        "create-admin",
        "--email",
        &worker.email,
        "--password",
        "another admin passphrase",
    ]);
    app.cli(&[
        "create-admin",
        "--email",
        "Second.Admin@Test.Example",
        "--password",
        "a third admin passphrase",
    ]);
    let trail: Vec<(String, Option<uuid::Uuid>, Option<uuid::Uuid>)> = sqlx::query_as(
        "SELECT action, actor_id, entity_id FROM activities
         WHERE action IN ('user.create', 'user.password_change', 'user.role_change')
         ORDER BY created_at, action",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let second: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM users WHERE email = 'second.admin@test.example'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    let by_cli: Vec<(&str, Option<uuid::Uuid>)> = trail
        .iter()
        .filter(|(_, actor, _)| actor.is_none())
        .map(|(action, _, entity)| (action.as_str(), *entity))
        .collect();
    assert_eq!(
        by_cli,
        vec![
            ("user.create", Some(admin.id)),
            ("user.password_change", Some(admin.id)),
            ("user.password_change", Some(worker.id)),
            ("user.role_change", Some(worker.id)),
            ("user.create", Some(second)),
        ]
    );
    // The API's rules hold on the command line too.
    for (email, password) in [
        ("not-an-email", "a long enough passphrase"),
        ("third@test.example", "third@test.example"),
        ("third@test.example", "short"),
    ] {
        app.cli_refused(&["create-admin", "--email", email, "--password", password]);
    }
    // A published sample password, outside development.
    let said = app.cli_refused_with(
        &[("APP_ENV", "production")],
        &[
            "create-admin",
            "--email",
            "third@test.example",
            "--password",
            "change-me-now",
        ],
    );
    assert!(said.contains("sample value"), "{said}");
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM users WHERE email LIKE 'third%' OR email = 'not-an-email'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn an_admin_email_without_a_password_stops_start_up_when_no_admin_exists() {
    let app = TestApp::spawn().await;
    sqlx::query("UPDATE users SET role = 'supervisor' WHERE role = 'admin'")
        .execute(&app.db)
        .await
        .unwrap();
    let said = app.cli_refused_with(
        &[
            ("APP_ENV", "production"),
            ("ADMIN_EMAIL", "first@test.example"),
            ("ADMIN_PASSWORD", ""),
        ],
        &["seed"],
    );
    assert!(said.contains("ADMIN_PASSWORD"), "{said}");
    let admins: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE role = 'admin'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(admins, 0);
    // With neither, it starts (an admin can be made later from the command line).
    let output = app.cli_with(
        &[
            ("APP_ENV", "production"),
            ("ADMIN_EMAIL", ""),
            ("ADMIN_PASSWORD", ""),
        ],
        &["seed"],
    );
    assert!(String::from_utf8_lossy(&output).contains("seed data loaded"));
}

#[tokio::test]
async fn a_session_begun_after_a_reset_elsewhere_is_not_refused_by_a_stale_cache() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    // The service now holds the account's state, as it would for anyone using the app.
    let (status, _) = send(app.get("/api/users/me").bearer_auth(&admin.token)).await;
    assert_eq!(status, StatusCode::OK);
    // Another process (here the command line) resets the account and ends its sessions.
    app.cli(&[
        "create-admin",
        "--email",
        ADMIN_EMAIL,
        "--password",
        "a fresh admin passphrase",
    ]);
    let (status, body) = app.login(ADMIN_EMAIL, "a fresh admin passphrase").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let (status, body) = send(app.get("/api/users/me").bearer_auth(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The old session is over as soon as the new state has been read.
    let (status, body) = send(app.get("/api/users/me").bearer_auth(&admin.token)).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
}

#[tokio::test]
async fn a_wrong_current_password_changes_nothing() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    let (status, body) = send(
        app.post("/api/users/me/password")
            .bearer_auth(&user.token)
            .json(&json!({"current_password": "not-the-password", "new_password": "a brand new passphrase"})),
    )
    .await;
    assert_invalid(status, &body, "current_password");
    assert_eq!(app.login(&user.email, PASSWORD).await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_current_password_is_no_new_password() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    let (status, body) = send(
        app.post("/api/users/me/password")
            .bearer_auth(&user.token)
            .json(&json!({"current_password": PASSWORD, "new_password": PASSWORD})),
    )
    .await;
    assert_invalid(status, &body, "new_password");
    // Nothing changed: the session the request came with goes on.
    let (status, me) = send(app.get("/api/users/me").bearer_auth(&user.token)).await;
    assert_eq!(status, StatusCode::OK, "{me}");
}

#[tokio::test]
async fn a_password_change_from_a_session_ended_elsewhere_stores_nothing() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    // The session is checked once (and remembered for a while by this instance).
    let (status, _) = send(app.get("/api/users/me").bearer_auth(&user.token)).await;
    assert_eq!(status, StatusCode::OK);
    // Another instance deactivates the account.
    sqlx::query(
        "UPDATE users SET status = 'inactive', token_version = token_version + 1 WHERE id = $1",
    )
    .bind(user.id)
    .execute(&app.db)
    .await
    .unwrap();
    let (status, body) = send(
        app.post("/api/users/me/password")
            .bearer_auth(&user.token)
            .json(&json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"})),
    )
    .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
    let changed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM activities WHERE action = 'user.password_change'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(changed, 0);
}

#[tokio::test]
async fn the_sixth_auth_request_in_the_window_is_rate_limited() {
    let app = TestApp::spawn_with(|env| {
        env.insert("RATE_LIMIT_ENABLED".into(), "true".into());
    })
    .await;
    for _ in 0..5 {
        let response = app
            .post("/api/auth/login")
            .json(&json!({"email": "nobody@test.example", "password": "whatever-123"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key("x-ratelimit-remaining"));
    }
    let response = app
        .post("/api/auth/login")
        .json(&json!({"email": ADMIN_EMAIL, "password": "whatever-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0);
    // Both headers that tell the wait agree.
    assert_eq!(
        response.headers()["x-ratelimit-after"].to_str().unwrap(),
        retry_after.to_string()
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(
        body["error"]["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    // Health is not limited.
    assert_eq!(send(app.get("/health")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_general_api_limit_is_per_user() {
    let app = TestApp::spawn_with(|env| {
        env.insert("RATE_LIMIT_ENABLED".into(), "true".into());
        env.insert("RATE_LIMIT_API".into(), "3/15m".into());
    })
    .await;
    let a = app.user("focal", None).await;
    let b = app.user("focal", None).await;
    for _ in 0..3 {
        assert_eq!(
            send(app.get("/api/users/me").bearer_auth(&a.token)).await.0,
            StatusCode::OK
        );
    }
    let (status, body) = send(app.get("/api/users/me").bearer_auth(&a.token)).await;
    assert_error(status, &body, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // The scheme in another case is the same user, not a fresh budget by address.
    let (status, body) = send(
        app.get("/api/users/me")
            .header("authorization", format!("BEARER {}", a.token)),
    )
    .await;
    assert_error(status, &body, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // Another user from the same address still has their own budget.
    assert_eq!(
        send(app.get("/api/users/me").bearer_auth(&b.token)).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_token_ended_by_a_password_change_cannot_spend_the_new_sessions_budget() {
    let app = TestApp::spawn_with(|env| {
        env.insert("RATE_LIMIT_ENABLED".into(), "true".into());
        env.insert("RATE_LIMIT_API".into(), "3/15m".into());
    })
    .await;
    let user = app.user("focal", None).await;
    let (status, body) = send(
        app.post("/api/users/me/password")
            .bearer_auth(&user.token)
            .json(&json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    // Someone still holding the old token keeps sending it.
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(
            send(app.get("/api/users/me").bearer_auth(&user.token))
                .await
                .0,
        );
    }
    // Refused, and counted: the old token's budget (3, one spent on the change) runs out.
    assert_eq!(
        answers,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let (status, login) = app.login(&user.email, "a brand new passphrase").await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let token = login["access_token"].as_str().unwrap();
    let (status, body) = send(app.get("/api/users/me").bearer_auth(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A service whose logins allow two attempts per address, with `TRUST_PROXY` as given (the
/// tests reach it from 127.0.0.1).
async fn two_logins_per_address(trust_proxy: &str) -> TestApp {
    TestApp::spawn_with(|env| {
        env.insert("RATE_LIMIT_ENABLED".into(), "true".into());
        env.insert("RATE_LIMIT_AUTH".into(), "2/15m".into());
        env.insert("TRUST_PROXY".into(), trust_proxy.into());
    })
    .await
}

/// Sends three failing logins with `forwarded(i)` as `X-Forwarded-For`: two answered 401, the
/// third limited, as from one address.
async fn three_logins_count_as_one_address(app: &TestApp, forwarded: impl Fn(u32) -> String) {
    for i in 0..3 {
        let status = login_forwarded(app, forwarded(i)).await;
        let expected = if i < 2 {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(
            status, expected,
            "request {i}: a spoofed entry must not buy a new budget"
        );
    }
}

async fn login_forwarded(app: &TestApp, forwarded: String) -> StatusCode {
    app.post("/api/auth/login")
        .header("x-forwarded-for", forwarded)
        .json(&json!({"email": "x@test.example", "password": "whatever-123"}))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_address_it_appended_is_the_clients() {
    let app = two_logins_per_address("127.0.0.0/8, ::1").await;
    // What the client wrote comes first; the proxy appends the address it saw.
    three_logins_count_as_one_address(&app, |i| format!("10.0.0.{i}, 203.0.113.7")).await;
    assert_eq!(
        login_forwarded(&app, "10.0.0.9, 198.51.100.9".into()).await,
        StatusCode::UNAUTHORIZED,
        "another client, its own budget"
    );
}

#[tokio::test]
async fn behind_two_named_proxies_the_address_the_outer_one_saw_is_the_clients() {
    // A CDN edge (203.0.113.0/24) in front of a load balancer (the tests' 127.0.0.1).
    let app = two_logins_per_address("127.0.0.0/8, 203.0.113.0/24").await;
    three_logins_count_as_one_address(&app, |i| format!("10.0.0.{i}, 198.51.100.9, 203.0.113.7"))
        .await;
    assert_eq!(
        login_forwarded(&app, "198.51.100.10, 203.0.113.7".into()).await,
        StatusCode::UNAUTHORIZED,
        "another client behind the same edge, its own budget"
    );
}

#[tokio::test]
async fn a_trusted_proxy_that_writes_the_clients_port_is_understood() {
    let app = two_logins_per_address("true").await;
    // The same address from three ports is one client.
    three_logins_count_as_one_address(&app, |i| format!("10.0.0.1, 203.0.113.7:{}", 40000 + i))
        .await;
    assert_eq!(
        login_forwarded(&app, "[2001:db8::1]:443".into()).await,
        StatusCode::UNAUTHORIZED,
        "another client, its own budget"
    );
}

#[tokio::test]
async fn a_trusted_proxy_that_writes_ipv6_in_brackets_is_understood() {
    let app = two_logins_per_address("true").await;
    three_logins_count_as_one_address(&app, |_| "[2001:db8:1::7]".into()).await;
    assert_eq!(
        login_forwarded(&app, "[2001:db8:2::7]".into()).await,
        StatusCode::UNAUTHORIZED,
        "another client, its own budget, not the proxy's"
    );
}

#[tokio::test]
async fn bytes_a_client_wrote_do_not_hide_the_address_its_proxy_appended() {
    let app = two_logins_per_address("true").await;
    let line = |client: &str| {
        let mut bytes = b"\xff\xfe, ".to_vec();
        bytes.extend_from_slice(client.as_bytes());
        reqwest::header::HeaderValue::from_bytes(&bytes).unwrap()
    };
    let login = |client: &'static str| {
        app.post("/api/auth/login")
            .header("x-forwarded-for", line(client))
            .json(&json!({"email": "x@test.example", "password": "whatever-123"}))
            .send()
    };
    for i in 0..3 {
        let expected = if i < 2 {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(
            login("203.0.113.7").await.unwrap().status(),
            expected,
            "request {i}"
        );
    }
    assert_eq!(
        login("198.51.100.9").await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "another client, its own budget, not the proxy's"
    );
}

#[tokio::test]
async fn a_proxy_that_adds_its_own_header_line_is_believed_not_the_clients_line() {
    let app = two_logins_per_address("127.0.0.1").await;
    for i in 0..3 {
        let status = app
            .post("/api/auth/login")
            .header("x-forwarded-for", format!("10.0.0.{i}"))
            .header("x-forwarded-for", "203.0.113.7")
            .json(&json!({"email": "x@test.example", "password": "whatever-123"}))
            .send()
            .await
            .unwrap()
            .status();
        let expected = if i < 2 {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(status, expected, "request {i}");
    }
}

#[tokio::test]
async fn x_forwarded_for_is_ignored_unless_the_proxy_is_trusted() {
    let app = two_logins_per_address("false").await;
    three_logins_count_as_one_address(&app, |i| format!("10.0.0.{i}")).await;
}

#[tokio::test]
async fn x_forwarded_for_is_ignored_from_a_peer_that_is_not_one_of_the_trusted_proxies() {
    // A client that reaches the service beside its proxy cannot choose its address.
    let app = two_logins_per_address("10.1.2.3, 192.168.0.0/16").await;
    three_logins_count_as_one_address(&app, |i| format!("10.0.0.{i}")).await;
}

#[tokio::test]
async fn the_conflict_queue_is_not_counted_as_syncing() {
    // An admin working through the queue spends the general budget, not a device's sync budget.
    let app = TestApp::spawn_with(|env| {
        env.insert("RATE_LIMIT_ENABLED".into(), "true".into());
        env.insert("RATE_LIMIT_SYNC".into(), "1/5m".into());
    })
    .await;
    let admin = app.admin().await;
    for _ in 0..3 {
        let (status, body) = send(app.get("/api/sync/conflicts").bearer_auth(&admin.token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let pull = || send(app.get("/api/sync/pull").bearer_auth(&admin.token));
    assert_eq!(pull().await.0, StatusCode::OK);
    let (status, body) = pull().await;
    assert_error(status, &body, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
}

#[tokio::test]
async fn refresh_tokens_expired_for_a_day_are_pruned_and_current_ones_kept() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    let (gone, kept) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    sqlx::query(
        "WITH reused AS (INSERT INTO refresh_families_reused (family_id) VALUES ($2), ($3))
         INSERT INTO refresh_tokens (user_id, family_id, token_hash, expires_at)
         VALUES ($1, $2, sha256('long gone'::bytea), now() - interval '2 days'),
                ($1, $3, sha256('just gone'::bytea), now() - interval '1 hour')",
    )
    .bind(user.id)
    .bind(gone)
    .bind(kept)
    .execute(&app.db)
    .await
    .unwrap();
    let removed = field_attendance::auth::refresh::prune_expired(&app.db)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    // A chain's reuse is forgotten with its last token.
    let reused: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT family_id FROM refresh_families_reused")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(reused, [kept]);
    let (status, _) = refresh(&app, &user.refresh_token).await;
    assert_eq!(status, StatusCode::OK, "the current token still works");
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM refresh_tokens WHERE expires_at < now()")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(left, 1, "a token expired an hour ago is kept a while");
}

#[tokio::test]
async fn a_password_check_that_ends_before_its_answer_is_taken_back() {
    // As when the client goes away or the hashing queue times out mid-login.
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    sqlx::query("UPDATE users SET failed_login_count = 4 WHERE id = $1")
        .bind(user.id)
        .execute(&app.db)
        .await
        .unwrap();
    let state = || async {
        sqlx::query_as::<_, (i32, bool)>(
            "SELECT failed_login_count, locked_until IS NOT NULL FROM users WHERE id = $1",
        )
        .bind(user.id)
        .fetch_one(&app.db)
        .await
        .unwrap()
    };
    let attempt =
        field_attendance::auth::lockout::attempt(&app.db, Some(user.id), &app.config.auth)
            .await
            .unwrap();
    assert_eq!(
        state().await,
        (5, true),
        "the fifth check locks while it runs"
    );
    drop(attempt);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while state().await != (4, false) {
        assert!(std::time::Instant::now() < deadline, "{:?}", state().await);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(app.login(&user.email, PASSWORD).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_logged_out_token_presented_again_ends_no_other_session() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    let (status, tablet) = app.login(&user.email, PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    let status = logout(&app, &user.token, &user.refresh_token).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for _ in 0..2 {
        let (status, _) = refresh(&app, &user.refresh_token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, _) = send(
        app.get("/api/users/me")
            .bearer_auth(tablet["access_token"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the tablet's session goes on");
}

#[tokio::test]
async fn an_admin_sets_a_forgotten_password_which_lifts_the_lock_and_ends_old_sessions() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let supervisor = app.user("supervisor", None).await;
    let worker = app.user("focal", Some(supervisor.id)).await;
    for _ in 0..5 {
        app.login(&worker.email, "not the password at all").await;
    }
    assert_eq!(
        app.login(&worker.email, PASSWORD).await.0,
        StatusCode::LOCKED
    );
    let reset = |by: &crate::helpers::TestUser, id: uuid::Uuid, password: &str| {
        send(
            app.post(&format!("/api/users/{id}/password"))
                .bearer_auth(&by.token)
                .json(&json!({ "new_password": password })),
        )
    };

    // Refused: a weak password, a supervisor, an admin's password, an unknown user.
    let (status, body) = reset(&admin, worker.id, "short").await;
    assert_invalid(status, &body, "new_password");
    let (status, body) = reset(&supervisor, worker.id, "a handed-over passphrase").await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, body) = reset(&admin, admin.id, "a handed-over passphrase").await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let other_admin = app.user("admin", None).await;
    let (status, body) = reset(&admin, other_admin.id, "a handed-over passphrase").await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(
        app.login(&other_admin.email, PASSWORD).await.0,
        StatusCode::OK
    );
    let (status, body) = reset(&admin, uuid::Uuid::new_v4(), "a handed-over passphrase").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        app.login(&worker.email, PASSWORD).await.0,
        StatusCode::LOCKED
    );

    let (status, body) = reset(&admin, worker.id, "a handed-over passphrase").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = send(app.get("/api/users/me").bearer_auth(&worker.token)).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
    let (status, body) = refresh(&app, &worker.refresh_token).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
    let (status, login) = app.login(&worker.email, "a handed-over passphrase").await;
    assert_eq!(status, StatusCode::OK, "{login}");
    assert_eq!(login["user"]["role"], "focal");
    let trail: Vec<(Option<uuid::Uuid>, Option<uuid::Uuid>)> = sqlx::query_as(
        "SELECT actor_id, entity_id FROM activities WHERE action = 'user.password_reset'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(trail, [(Some(admin.id), Some(worker.id))]);
}

#[tokio::test]
async fn a_password_reset_racing_a_promotion_to_admin_is_refused() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let supervisor = app.user("supervisor", None).await;
    // Another admin promotes the supervisor; the promotion holds the row until it commits.
    let mut promotion = app.db.begin().await.unwrap();
    sqlx::query("UPDATE users SET role = 'admin' WHERE id = $1")
        .bind(supervisor.id)
        .execute(&mut *promotion)
        .await
        .unwrap();
    let reset = send(
        app.post(&format!("/api/users/{}/password", supervisor.id))
            .bearer_auth(&admin.token)
            .json(&json!({ "new_password": "a handed-over passphrase" })),
    );
    let commit = async {
        app.until_waiting_on_rows(1, "the reset to wait for the promotion")
            .await;
        promotion.commit().await.unwrap();
    };
    let ((status, body), ()) = tokio::join!(reset, commit);
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(
        app.login(&supervisor.email, PASSWORD).await.0,
        StatusCode::OK,
        "the new admin's password is unchanged"
    );
}

#[tokio::test]
async fn registration_gives_one_reason_for_every_supervisor_it_refuses() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let facility = app.facility().await;
    let worker = app.user("focal", None).await;
    let gone = app.user("supervisor", None).await;
    let (status, _) = send(
        app.delete(&format!("/api/users/{}", gone.id))
            .bearer_auth(&admin.token),
    )
    .await;
    assert!(status.is_success());
    let mut reasons = vec![];
    for supervisor in [uuid::Uuid::new_v4(), worker.id, gone.id] {
        let mut request = registration(facility);
        request["supervisor_id"] = json!(supervisor);
        let (status, body) = send(app.post("/api/auth/register").json(&request)).await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        reasons.push(body["error"]["details"]["supervisor_id"].clone());
    }
    // Whether a known id is a user, may supervise or is active is not told to a stranger.
    assert!(reasons[0].is_array(), "{reasons:?}");
    assert!(reasons.iter().all(|r| *r == reasons[0]), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_logins_at_once_on_a_hash_with_older_parameters_both_succeed() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    hash_with_older_parameters(&app, user.id).await;
    // Both read the older hash before either stores its upgrade: the account's row is held
    // until both wait on it.
    let mut hold = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(user.id)
        .execute(&mut *hold)
        .await
        .unwrap();
    let release = async {
        app.until_waiting_on_locks(2, "both logins wait on the account")
            .await;
        hold.commit().await.unwrap();
    };
    let (first, second, ()) = tokio::join!(
        app.login(&user.email, PASSWORD),
        app.login(&user.email, PASSWORD),
        release
    );
    assert_eq!(first.0, StatusCode::OK, "{}", first.1);
    assert_eq!(second.0, StatusCode::OK, "{}", second.1);
    assert_eq!(app.login(&user.email, PASSWORD).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_does_not_overwrite_a_reset_made_while_it_was_checked() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let user = app.user("focal", None).await;
    // The admin's reset, as it commits while the user's change checks the current password:
    // the hash of another user's password, set by the admin through the API.
    let donor = app.user("focal", None).await;
    let (status, body) = send(
        app.post(&format!("/api/users/{}/password", donor.id))
            .bearer_auth(&admin.token)
            .json(&json!({"new_password": "set by the admin 71"})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let mut reset = app.db.begin().await.unwrap();
    sqlx::query(
        "UPDATE users SET password_hash = (SELECT password_hash FROM users WHERE id = $2),
                          token_version = token_version + 1
         WHERE id = $1",
    )
    .bind(user.id)
    .bind(donor.id)
    .execute(&mut *reset)
    .await
    .unwrap();
    let change = send(
        app.post("/api/users/me/password")
            .bearer_auth(&user.token)
            .json(&json!({"current_password": PASSWORD, "new_password": "chosen by the user 42"})),
    );
    let commit = async {
        app.until_waiting_on_rows(1, "the change waits on the account")
            .await;
        reset.commit().await.unwrap();
    };
    let ((status, body), ()) = tokio::join!(change, commit);
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
    assert_eq!(
        app.login(&user.email, "set by the admin 71").await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.login(&user.email, "chosen by the user 42").await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_login_with_an_email_longer_than_any_address_is_refused_and_not_recorded() {
    let app = TestApp::spawn().await;
    let email = format!("{}@example.org", "x".repeat(300_000));
    let (status, body) = app.login(&email, PASSWORD).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    );
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM activities WHERE action = 'auth.login_failed'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(recorded, 0);
    // An address of the longest length is still checked, and its failure recorded.
    let longest = format!("{}@example.org", "x".repeat(254 - "@example.org".len()));
    let (status, _) = app.login(&longest, PASSWORD).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM activities WHERE action = 'auth.login_failed'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(recorded, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lockout_whose_client_left_before_its_trail_was_written_is_still_in_the_trail() {
    let app = TestApp::spawn_with(|env| {
        env.insert("LOGIN_MAX_FAILURES".into(), "1".into());
    })
    .await;
    let user = app.user("focal", None).await;
    // The audit trail is slow to take the rows: the wrong password has set the lock, and its
    // client gives up before the rows are written.
    let mut trail = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE activities IN SHARE MODE")
        .execute(&mut *trail)
        .await
        .unwrap();
    let request = app
        .post("/api/auth/login")
        .json(&json!({"email": user.email, "password": "not-the-password-1"}));
    let leaving = tokio::spawn(request.send());
    app.until_waiting_on_locks(1, "the failed login writes its trail")
        .await;
    leaving.abort();
    assert!(leaving.await.unwrap_err().is_cancelled());
    // The service sees the connection close and drops the request (nothing shows when it has:
    // a second is ample on a busy machine).
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    trail.commit().await.unwrap();

    let (status, body) = app.login(&user.email, "not-the-password-1").await;
    assert_error(status, &body, StatusCode::LOCKED, "account_locked");
    app.until_counted(
        &format!(
            "SELECT count(*) FROM activities WHERE action = 'auth.lockout' AND entity_id = '{}'",
            user.id
        ),
        1,
        "the lockout is in the trail",
    )
    .await;
}
