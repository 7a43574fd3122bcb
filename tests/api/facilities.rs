//! Geography, facilities and facility imports from real files.

use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, assert_error, assert_invalid, send};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("tests/fixtures/{name}")).unwrap()
}

/// A zip archive of `parts`, beside the parts of `base` not named alike.
fn zip_with(base: Option<&[u8]>, parts: &[(&str, &str)]) -> Vec<u8> {
    use std::io::Write;
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    if let Some(base) = base {
        let mut source = zip::ZipArchive::new(std::io::Cursor::new(base)).unwrap();
        for i in 0..source.len() {
            let entry = source.by_index_raw(i).unwrap();
            let name = entry.name().unwrap().into_owned();
            if !parts.iter().any(|(replaced, _)| *replaced == name) {
                out.raw_copy_file(entry).unwrap();
            }
        }
    }
    for (name, text) in parts {
        out.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        out.write_all(text.as_bytes()).unwrap();
    }
    out.finish().unwrap().into_inner()
}

/// A workbook of `rows` rows of 64 cells, every one showing the same shared string of `chars`
/// characters: a few kilobytes of zip that would read as `rows * 64 * chars` bytes of text.
fn one_string_everywhere(chars: usize, rows: usize) -> Vec<u8> {
    let column = |i: usize| {
        let mut name = String::new();
        let mut n = i + 1;
        while n > 0 {
            name.insert(0, (b'A' + ((n - 1) % 26) as u8) as char);
            n = (n - 1) / 26;
        }
        name
    };
    let mut sheet = String::from(
        r#"<?xml version="1.0"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>"#,
    );
    for row in 1..=rows {
        sheet.push_str(&format!(r#"<row r="{row}">"#));
        for col in 0..64 {
            sheet.push_str(&format!(
                r#"<c r="{}{row}" t="s"><v>0</v></c>"#,
                column(col)
            ));
        }
        sheet.push_str("</row>");
    }
    sheet.push_str("</sheetData></worksheet>");
    let strings = format!(
        r#"<?xml version="1.0"?><sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="1" uniqueCount="1"><si><t>{}</t></si></sst>"#,
        "A".repeat(chars)
    );
    zip_with(
        Some(&fixture("facilities.xlsx")),
        &[
            ("xl/worksheets/sheet1.xml", &sheet),
            ("xl/sharedStrings.xml", &strings),
        ],
    )
}

/// A workbook whose styles give `formats` cell formats the same font, named by `chars`
/// characters: calamine copies the name into each. `stray` goes before the fonts.
fn one_font_in_every_format(chars: usize, formats: usize, stray: &str) -> Vec<u8> {
    one_font_in_every(chars, formats, stray, r#"<xf numFmtId="0" fontId="0"/>"#)
}

/// As [`one_font_in_every_format`], each format written as `xf`.
fn one_font_in_every(chars: usize, formats: usize, stray: &str, xf: &str) -> Vec<u8> {
    let styles = format!(
        r#"<?xml version="1.0"?><styleSheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">{stray}<fonts count="1"><font><name val="{}"/></font></fonts><cellXfs count="{formats}">{}</cellXfs></styleSheet>"#,
        "A".repeat(chars),
        xf.repeat(formats)
    );
    zip_with(
        Some(&fixture("facilities.xlsx")),
        &[("xl/styles.xml", &styles)],
    )
}

/// A workbook whose shared strings are `count` empty ones, behind a comment of letters that do
/// not compress, so that the part's compression ratio is one a real workbook can have.
fn empty_shared_strings(count: usize) -> Vec<u8> {
    let noise = letters(count / 25);
    let strings = format!(
        r#"<?xml version="1.0"?><sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" uniqueCount="{count}"><!-- {noise} -->{}</sst>"#,
        "<si/>".repeat(count)
    );
    zip_with(
        Some(&fixture("facilities.xlsx")),
        &[("xl/sharedStrings.xml", &strings)],
    )
}

/// `len` letters that do not compress, to give a part a compression ratio a real workbook can
/// have.
fn letters(len: usize) -> String {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (b'a' + (seed % 26) as u8) as char
        })
        .collect()
}

/// A workbook whose first sheet is the usual one, followed by `sheets` more, all shown by one
/// relationship naming a path of `chars` characters: calamine gives each sheet its own copy.
fn many_sheets(sheets: usize, chars: usize) -> Vec<u8> {
    many_sheets_in("xl/workbook.xml", sheets, chars)
}

/// As [`many_sheets`], the workbook part at `path` (in `xl/`), which the package names in lower
/// case from the root, as a reader finds it.
fn many_sheets_in(path: &str, sheets: usize, chars: usize) -> Vec<u8> {
    let relationships = format!(
        r#"<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/><Relationship Id="rId3" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/styles" Target="styles.xml"/><Relationship Id="rId4" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings" Target="sharedStrings.xml"/><Relationship Id="rId9" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="{}"/></Relationships>"#,
        "a".repeat(chars)
    );
    let more = r#"<sheet r:id="rId9"/>"#.repeat(sheets);
    let workbook = format!(
        r#"<?xml version="1.0"?><workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><!-- {} --><sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/>{more}</sheets></workbook>"#,
        letters(more.len() / 100)
    );
    let name = path.rsplit('/').next().unwrap();
    let package = format!(
        r#"<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="/{}"/></Relationships>"#,
        path.to_lowercase()
    );
    zip_with(
        Some(&fixture("facilities.xlsx")),
        &[
            ("_rels/.rels", &package),
            (&format!("xl/_rels/{name}.rels"), &relationships),
            (path, &workbook),
        ],
    )
}

async fn import(
    app: &TestApp,
    token: &str,
    name: &str,
    bytes: Vec<u8>,
    query: &str,
) -> (StatusCode, Value) {
    let form = Form::new().part("file", Part::bytes(bytes).file_name(name.to_string()));
    send(
        app.post(&format!("/api/facilities/import{query}"))
            .bearer_auth(token)
            .multipart(form),
    )
    .await
}

/// The admin imports the sample file (four facilities and a row for a council that does not
/// exist), as the tests building on stored facilities begin.
async fn import_sample(app: &TestApp, admin: &TestUser) {
    let (status, report) = import(
        app,
        &admin.token,
        "f.csv",
        fixture("facilities_utf8.csv"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
}

async fn facility_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM facilities")
        .fetch_one(&app.db)
        .await
        .unwrap()
}

fn errors(report: &Value) -> Vec<(u64, String)> {
    report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["row"].as_u64().unwrap(),
                e["column"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn regions_and_councils_are_seeded() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    let (status, regions) = send(app.get("/api/regions").bearer_auth(&user.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(regions["total"], 5);
    let kigali = regions["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "Kigali City")
        .unwrap();
    let (_, councils) = send(
        app.get(&format!(
            "/api/regions/{}/councils",
            kigali["id"].as_str().unwrap()
        ))
        .bearer_auth(&user.token),
    )
    .await;
    let names: Vec<&str> = councils["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["Gasabo", "Kicukiro", "Nyarugenge"]);
    let (_, all) = send(
        app.get("/api/councils?per_page=100")
            .bearer_auth(&user.token),
    )
    .await;
    assert_eq!(all["total"], 30);
    let (status, body) = send(
        app.get(&format!("/api/regions/{}/councils", uuid::Uuid::new_v4()))
            .bearer_auth(&user.token),
    )
    .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn a_utf8_csv_imports_its_valid_rows_and_reports_the_others_by_row() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (status, report) = import(
        &app,
        &admin.token,
        "facilities.csv",
        fixture("facilities_utf8.csv"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["format"], "csv");
    assert_eq!(
        (
            report["total_rows"].as_u64(),
            report["created"].as_u64(),
            report["failed"].as_u64()
        ),
        (Some(6), Some(4), Some(2))
    );
    assert_eq!(
        errors(&report),
        vec![(5, "council_name".into()), (6, "code".into())]
    );
    assert_eq!(facility_count(&app).await, 4);
    let (council, phone): (String, String) = sqlx::query_as(
        "SELECT c.name, f.contact_phone FROM facilities f JOIN councils c ON c.id = f.council_id WHERE f.code = 'KGL-HC-002'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(
        (council.as_str(), phone.as_str()),
        ("Gasabo", "+250788000002")
    );
    assert!(app.actions().await.contains(&"facility.import".to_string()));
}

#[tokio::test]
async fn failed_formulas_control_characters_and_case_twins_are_row_errors_not_a_failed_file() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    // Over 64 KiB of good rows first, so the NUL is past what the binary check reads.
    let mut text = String::from("name,code,latitude,longitude,council_name\n");
    for i in 0..1500 {
        text.push_str(&format!(
            "Clinic number {i:04},GOOD-{i:04},-1.9,30.1,Gasabo\n"
        ));
    }
    text.push_str("#N/A,NA-1,-1.9,30.1,Gasabo\n");
    text.push_str("Lookup Clinic,#REF!,-1.9,30.1,Gasabo\n");
    text.push_str("Nul Clinic,NUL-1,1\u{0}5,30.1,Gasab\u{0}o\n");
    text.push_str("Quote Clinic,Q-1,-1.9,30.1,Nyang'oma\n");
    text.push_str("Sigma Clinic,HC-ΑΣ,-1.9,30.1,Gasabo\n");
    text.push_str("Sigma Twin,hc-ασ,-1.9,30.1,Gasabo\n");
    text.push_str("Dotted Clinic,HC-İ,-1.9,30.1,Gasabo\n");
    text.push_str("Dotless Clinic,HC-I,-1.9,30.1,Gasabo\n");
    let (status, report) = import(
        &app,
        &admin.token,
        "f.csv",
        text.into_bytes(),
        "?on_duplicate=update",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        errors(&report),
        vec![
            (1502, "name".into()),
            (1503, "code".into()),
            (1504, "latitude".into()),
            (1504, "council_name".into()),
            (1505, "council_name".into()),
            // Case twins (as Postgres's lower() reads them) are one code given twice: neither
            // row goes in.
            (1506, "code".into()),
            (1507, "code".into()),
            (1508, "code".into()),
            (1509, "code".into()),
        ],
        "{report}"
    );
    let messages = report["errors"].to_string();
    assert!(
        messages.contains("#N/A") && messages.contains("formula"),
        "{messages}"
    );
    assert!(
        messages.contains(r"1\\u{0}5") && messages.contains("Nyang'oma"),
        "the NUL is shown escaped: {messages}"
    );
    assert!(!messages.contains("##"), "{messages}");
    assert_eq!(
        (report["created"].as_u64(), report["failed"].as_u64()),
        (Some(1500), Some(8))
    );
    assert_eq!(facility_count(&app).await, 1500);
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM facilities WHERE name LIKE '%#%' OR code LIKE '%#%'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn a_file_sent_while_another_is_being_read_or_applied_is_told_to_retry() {
    // Held as it begins to read its file (it looks up the councils), or as it waits to apply
    // (another import holds the facilities): one waiting beside it would hold its whole file's
    // rows, and a connection.
    for (hold, waits) in [
        (
            "LOCK TABLE councils IN ACCESS EXCLUSIVE MODE",
            "to begin reading",
        ),
        ("SELECT pg_advisory_xact_lock($1)", "to apply"),
    ] {
        let app = TestApp::spawn().await;
        let admin = app.admin().await;
        let mut holder = app.db.begin().await.unwrap();
        let held = sqlx::query(hold);
        let held = if hold.contains("$1") {
            held.bind(field_attendance::import::apply::IMPORT_LOCK)
        } else {
            held
        };
        held.execute(&mut *holder).await.unwrap();
        let file = || fixture("facilities_utf8.csv");
        let first = import(&app, &admin.token, "facilities.csv", file(), "");
        let second = async {
            app.until_waiting_on_locks(1, &format!("the first import waits {waits}"))
                .await;
            let second = import(&app, &admin.token, "facilities.csv", file(), "");
            let answer = tokio::time::timeout(std::time::Duration::from_secs(10), second).await;
            holder.commit().await.unwrap();
            answer.expect("the second import is answered, not kept waiting")
        };
        let ((status, report), (busy, body)) = tokio::join!(first, second);
        assert_error(busy, &body, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        assert_eq!(status, StatusCode::OK, "{waits}: {report}");
        assert_eq!(report["created"], 4);
        // Its turn is free again.
        let (status, report) = import(&app, &admin.token, "facilities.csv", file(), "").await;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(report["skipped"], 4);
    }
}

#[tokio::test]
async fn a_file_refused_after_its_request_timed_out_is_still_in_the_trail() {
    let app = TestApp::spawn_with(|env| {
        env.insert("UPLOAD_TIMEOUT_SECS".into(), "1".into());
    })
    .await;
    let admin = app.admin().await;
    // The import is held past its request's time limit before it reads the file.
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE councils IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let file = b"name,code,latitude\nClinic,HC-1,-1.9\n".to_vec();
    let (status, body) = import(&app, &admin.token, "short.csv", file, "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    holder.commit().await.unwrap();
    app.until_counted(
        "SELECT count(*) FROM activities WHERE action = 'facility.import_refused'
           AND details->>'filename' = 'short.csv' AND details->>'code' = 'validation_failed'",
        1,
        "the refusal is recorded though no one waits for it",
    )
    .await;
    assert_eq!(facility_count(&app).await, 0);
}

#[tokio::test]
async fn a_bom_csv_with_council_codes_and_a_phone_column_imports() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (status, report) = import(
        &app,
        &admin.token,
        "export.csv",
        fixture("facilities_utf8_bom.csv"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        (report["created"].as_u64(), report["failed"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(errors(&report), vec![(4, "longitude".into())]);
    let name: String = sqlx::query_scalar("SELECT name FROM facilities WHERE code = 'HUY-HOS-001'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(name, "CHUB — Centre Hospitalier Universitaire de Butare");
}

#[tokio::test]
async fn a_windows_1252_semicolon_csv_keeps_its_french_accents() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (status, report) = import(
        &app,
        &admin.token,
        "liste.csv",
        fixture("facilities_cp1252_semicolon.csv"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        (report["total_rows"].as_u64(), report["created"].as_u64()),
        (Some(4), Some(3))
    );
    assert_eq!(errors(&report), vec![(5, "council_name".into())]);
    let (name, address, lat): (String, String, f64) =
        sqlx::query_as("SELECT name, address, latitude FROM facilities WHERE code = 'CS-101'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(name, "Centre de santé de Rwamagana");
    assert_eq!(address, "Rue de l'Hôpital");
    assert_eq!(lat, -1.9487);
}

#[tokio::test]
async fn an_xlsx_with_reordered_headers_blank_rows_and_numeric_codes_imports() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    // Named .csv on purpose: the format is recognised by content.
    let (status, report) = import(
        &app,
        &admin.token,
        "upload.csv",
        fixture("facilities.xlsx"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["format"], "xlsx");
    assert_eq!(
        (
            report["total_rows"].as_u64(),
            report["created"].as_u64(),
            report["failed"].as_u64()
        ),
        (Some(4), Some(3), Some(1))
    );
    assert_eq!(errors(&report), vec![(7, "latitude".into())]);
    let codes: Vec<String> = sqlx::query_scalar("SELECT code FROM facilities ORDER BY code")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(codes, vec!["5001", "5002", "5003"]);
    let (kind, council): (String, String) = sqlx::query_as(
        "SELECT f.type, c.name FROM facilities f JOIN councils c ON c.id = f.council_id WHERE f.code = '5002'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((kind.as_str(), council.as_str()), ("hospital", "Muhanga"));
}

#[tokio::test]
async fn reimporting_skips_everything_and_update_touches_only_changed_rows() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let file = fixture("facilities_utf8.csv");
    import(&app, &admin.token, "f.csv", file.clone(), "").await;

    let (_, again) = import(
        &app,
        &admin.token,
        "f.csv",
        file.clone(),
        "?on_duplicate=skip",
    )
    .await;
    assert_eq!(
        (
            again["created"].as_u64(),
            again["updated"].as_u64(),
            again["skipped"].as_u64()
        ),
        (Some(0), Some(0), Some(4))
    );

    let (_, same) = import(
        &app,
        &admin.token,
        "f.csv",
        file.clone(),
        "?on_duplicate=update",
    )
    .await;
    assert_eq!(
        (
            same["created"].as_u64(),
            same["updated"].as_u64(),
            same["skipped"].as_u64()
        ),
        (Some(0), Some(0), Some(4))
    );

    let changed = String::from_utf8(file)
        .unwrap()
        .replace("Kacyiru Health Centre", "Kacyiru Polyclinic");
    let (_, update) = import(
        &app,
        &admin.token,
        "f.csv",
        changed.into_bytes(),
        "?on_duplicate=update",
    )
    .await;
    assert_eq!(
        (
            update["created"].as_u64(),
            update["updated"].as_u64(),
            update["skipped"].as_u64()
        ),
        (Some(0), Some(1), Some(3))
    );
    let name: String = sqlx::query_scalar("SELECT name FROM facilities WHERE code = 'KGL-HC-002'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(name, "Kacyiru Polyclinic");
    assert_eq!(facility_count(&app).await, 4);

    let (status, list) = send(app.get("/api/facilities/imports").bearer_auth(&admin.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 4);
    assert_eq!(list["data"][0]["updated"], 1);
    // Listed with the report the import answered, under the same name for its id.
    assert_eq!(list["data"][0]["import_id"], update["import_id"]);
    assert_eq!(list["data"][0]["id"], update["import_id"]);
}

#[tokio::test]
async fn a_code_given_twice_in_a_file_applies_neither_row() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    import_sample(&app, &admin).await;
    let stored = || async {
        sqlx::query_as::<_, (String, f64)>(
            "SELECT name, latitude FROM facilities WHERE code = 'KGL-HC-002'",
        )
        .fetch_one(&app.db)
        .await
        .unwrap()
    };
    let before = stored().await;
    // A correction typed below the stale row, as often as above it.
    let file = "name,code,latitude,longitude,council_name\n\
                Kacyiru (old),KGL-HC-002,-1.90,30.10,Gasabo\n\
                Kacyiru (fixed),kgl-hc-002,-1.95,30.13,Gasabo\n\
                Remera Annex,KGL-HC-900,-1.95,30.11,Gasabo\n";
    let (status, report) = import(
        &app,
        &admin.token,
        "f.csv",
        file.as_bytes().to_vec(),
        "?on_duplicate=update",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        (
            report["created"].as_u64(),
            report["updated"].as_u64(),
            report["failed"].as_u64()
        ),
        (Some(1), Some(0), Some(2)),
        "{report}"
    );
    assert_eq!(
        errors(&report),
        vec![(2, "code".to_string()), (3, "code".to_string())]
    );
    assert_eq!(stored().await, before);
}

#[tokio::test]
async fn an_update_keeps_what_the_file_leaves_out() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    import_sample(&app, &admin).await;
    // No address or phone column, and a blank type: the hospital moves, and keeps the rest.
    let (status, update) = import(
        &app,
        &admin.token,
        "f.csv",
        b"code,name,type,latitude,longitude,council_name\n\
          KGL-HOS-001,CHUK,,-1.9540,30.0610,Nyarugenge\n\
          KGL-HC-010,Remera Health Centre,,-1.95,30.11,Gasabo\n"
            .to_vec(),
        "?on_duplicate=update",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{update}");
    assert_eq!(
        (update["created"].as_u64(), update["updated"].as_u64()),
        (Some(1), Some(1))
    );
    type Stored = (String, String, f64, Option<String>, Option<String>);
    let stored: Vec<Stored> = sqlx::query_as(
        "SELECT code, type, latitude, address, contact_phone FROM facilities
         WHERE code IN ('KGL-HOS-001', 'KGL-HC-010') ORDER BY code",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        stored,
        vec![
            (
                "KGL-HC-010".into(),
                "health_center".into(),
                -1.95,
                None,
                None
            ),
            (
                "KGL-HOS-001".into(),
                "hospital".into(),
                -1.954,
                Some("KN 4 Ave".into()),
                Some("+250788000003".into())
            ),
        ]
    );
}

#[tokio::test]
async fn dry_run_and_strict_apply_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (status, dry) = import(
        &app,
        &admin.token,
        "f.csv",
        fixture("facilities_utf8.csv"),
        "?dry_run=true",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            dry["created"].as_u64(),
            dry["failed"].as_u64(),
            dry["dry_run"].as_bool()
        ),
        (Some(4), Some(2), Some(true))
    );
    assert_eq!(facility_count(&app).await, 0);

    let (status, strict) = import(
        &app,
        &admin.token,
        "f.csv",
        fixture("facilities_utf8.csv"),
        "?strict=true",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            strict["created"].as_u64(),
            strict["skipped"].as_u64(),
            strict["failed"].as_u64(),
            strict["total_rows"].as_u64()
        ),
        (Some(0), Some(4), Some(2), Some(6)),
        "every row is counted once: {strict}"
    );
    assert_eq!(facility_count(&app).await, 0);
}

#[tokio::test]
async fn a_workbook_with_as_many_cell_formats_as_excel_allows_imports() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (status, report) = import(
        &app,
        &admin.token,
        "f.xlsx",
        one_font_in_every_format("Calibri".len(), 64_000, ""),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["created"], 3, "{report}");
}

#[tokio::test]
async fn a_workbook_of_many_sheets_imports_its_first() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (status, report) = import(
        &app,
        &admin.token,
        "f.xlsx",
        many_sheets(1_000, "worksheets/a long sheet name.xml".len()),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["created"], 3, "{report}");
    let (status, report) = import(
        &app,
        &admin.token,
        "f.xlsx",
        many_sheets_in("xl/Book.xml", 1_000, 40),
        "?dry_run=true",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["total_rows"], 4, "{report}");
}

#[tokio::test]
async fn a_csv_row_with_more_values_than_the_header_is_reported_not_shifted() {
    // Arrange: an address with an unquoted comma pushes the phone one column right.
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let csv = "name,code,latitude,longitude,council_name,address,contact_phone\n\
               Kimironko HC,HC-1,-1.95,30.12,Gasabo,KG 11 Ave, Kimironko,+250788000001\n\
               Remera HC,HC-2,-1.96,30.11,Gasabo,\"KG 15 Ave, Remera\",+250788000002\n\
               Kacyiru HC,HC-3,-1.94,30.09,Gasabo,KG 7 Ave,,\n";

    // Act
    let (status, report) = import(&app, &admin.token, "f.csv", csv.into(), "").await;

    // Assert: the shifted row is refused whole; the quoted one and a trailing empty cell read.
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        (report["created"].as_u64(), report["failed"].as_u64()),
        (Some(2), Some(1)),
        "{report}"
    );
    assert_eq!(report["errors"][0]["row"], 2, "{report}");
    assert!(
        report["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("separator"),
        "{report}"
    );
    let stored: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT code, address, contact_phone FROM facilities ORDER BY code")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        stored,
        vec![
            (
                "HC-2".to_string(),
                Some("KG 15 Ave, Remera".to_string()),
                Some("+250788000002".to_string())
            ),
            ("HC-3".to_string(), Some("KG 7 Ave".to_string()), None),
        ]
    );
}

#[tokio::test]
async fn a_csv_column_without_a_header_is_not_taken_for_a_shifted_row() {
    // Excel pads every line to the sheet's used range: notes in a column with no header make the
    // header line end in a separator. A value past that padded width is still a shift.
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let csv = "name;code;latitude;longitude;council_name;\r\n\
               Kimironko HC;HC-1;-1,95;30,12;Gasabo;call before visiting\r\n\
               Remera HC;HC-2;-1,96;30,11;Gasabo;\r\n\
               Kacyiru HC;HC-3;-1,94;30,09;Gasabo;KG 7 Ave; Kacyiru\r\n";

    let (status, report) = import(&app, &admin.token, "f.csv", csv.into(), "").await;

    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        (report["created"].as_u64(), report["failed"].as_u64()),
        (Some(2), Some(1)),
        "{report}"
    );
    assert_eq!(report["errors"][0]["row"], 4, "{report}");

    // Every line ends in a separator: a value shifted into the blank last field is still a
    // shift.
    let csv = "name;code;latitude;longitude;council_name;address;contact_phone;\n\
               Nyarutarama HC;HC-4;-1,95;30,1;Gasabo;KG 7 Ave; Kimironko;0788123456;\n\
               Gisozi HC;HC-5;-1,95;30,1;Gasabo;KG 9 Ave;0788000000;\n";
    let (status, report) = import(&app, &admin.token, "g.csv", csv.into(), "").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        (report["created"].as_u64(), report["failed"].as_u64()),
        (Some(1), Some(1)),
        "{report}"
    );
    assert_eq!(report["errors"][0]["row"], 2, "{report}");
}

#[tokio::test]
async fn hostile_and_broken_files_are_refused_and_change_nothing() {
    let app = TestApp::spawn_with(|env| {
        env.insert("MAX_UPLOAD_BYTES".into(), (256 * 1024).to_string());
    })
    .await;
    let admin = app.admin().await;
    let mut elf = vec![0x7F, b'E', b'L', b'F', 2, 1, 1, 0];
    elf.extend((0..4096u32).map(|i| (i * 31 % 251) as u8));
    let oversized = {
        let mut text = String::from("name,code,latitude,longitude,council_name\n");
        while text.len() < 300 * 1024 {
            text.push_str("Padding Clinic,PAD,-1.9,30.1,Gasabo\n");
        }
        text.into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "empty",
            Vec::new(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "header only",
            b"name,code,latitude,longitude,council_name\n".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "missing column",
            b"name,code,latitude\nA,B,1\n".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "binary renamed .csv",
            elf,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "oversized",
            oversized,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "zip bomb",
            fixture("zip_bomb.xlsx"),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            // A few bytes that would have the reader set aside room for 10^14 strings.
            "shared strings declared beyond the file",
            zip_with(
                Some(&fixture("facilities.xlsx")),
                &[(
                    "xl/sharedStrings.xml",
                    r#"<?xml version="1.0"?><!-- x --><sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="1" uniqueCount="100000000000000"><si><t>x</t></si></sst>"#,
                )],
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            // A decoy count under a prefix, which the reader does not read, before the count
            // it does: room for 50 million strings.
            "shared strings declared beyond the file behind a decoy",
            zip_with(
                Some(&fixture("facilities.xlsx")),
                &[(
                    "xl/sharedStrings.xml",
                    r#"<?xml version="1.0"?><sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:x="http://schemas.openxmlformats.org/spreadsheetml/2006/main" x:uniqueCount="1" uniqueCount="50000000"><si><t>x</t></si></sst>"#,
                )],
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            // A form feed before the count: a space to the workbook reader, not to XML.
            "shared strings declared beyond the file after a form feed",
            zip_with(
                Some(&fixture("facilities.xlsx")),
                &[(
                    "xl/sharedStrings.xml",
                    "<?xml version=\"1.0\"?><sst xmlns=\"http://schemas.openxmlformats.org/spreadsheetml/2006/main\" count=\"1\"\u{C}uniqueCount=\"50000000\"><si><t>x</t></si></sst>",
                )],
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "one long font name in every cell format after a form feed",
            one_font_in_every(
                300_000,
                1_000,
                "",
                "<xf numFmtId=\"0\"\u{C}fontId=\"0\"/>",
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            // Each format names the long font, and a decoy under a prefix names none.
            "one long font name in every cell format behind a decoy",
            one_font_in_every(
                300_000,
                1_000,
                "",
                r#"<xf numFmtId="0" fontId="0" x:fontId="9"/>"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            // A cell longer than Excel allows, shown in 44,800 cells: 46 GB of text if read.
            "one over-long string in every cell",
            one_string_everywhere(1_040_000, 700),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            // Cells of allowed length, but 1.3 GB of them.
            "one long string in every cell",
            one_string_everywhere(30_000, 700),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            // 1,000 formats, each with its own copy of a 300,000-character font name: 300 MB
            // from a few kilobytes.
            "one long font name in every cell format",
            one_font_in_every_format(300_000, 1_000, ""),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            // The same behind a tag never closed, which the reader passes over.
            "one long font name behind a stray tag",
            one_font_in_every_format(300_000, 1_000, "<fill><border>"),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "more shared strings than eight for each row allowed",
            empty_shared_strings(1_600_001),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            // Each of 2,000 sheets would get its own copy of a path of a million characters.
            "thousands of sheets naming one long path",
            many_sheets(2_000, 1_000_000),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            // The workbook part where the package says, in another case than it is named.
            "thousands of sheets naming one long path, in a workbook part moved",
            many_sheets_in("xl/Book.xml", 2_000, 1_000_000),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "more sheets than a workbook can list",
            many_sheets(70_000, "worksheets/sheet1.xml".len()),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "Excel 97-2003 workbook",
            [0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1]
                .into_iter()
                .chain([0; 504])
                .collect(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "Word document",
            zip_with(
                None,
                &[
                    ("[Content_Types].xml", "<Types/>"),
                    ("word/document.xml", "<w:document/>"),
                ],
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "OpenDocument workbook",
            zip_with(
                None,
                &[
                    ("mimetype", "application/vnd.oasis.opendocument.spreadsheet"),
                    ("content.xml", "<office:document-content/>"),
                ],
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "HTML table saved as .xls",
            b"\xEF\xBB\xBF\r\n<html><body><table><tr><td>name</td><td>code</td></tr></table></body></html>"
                .to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "Excel 2003 XML workbook",
            br#"<?xml version="1.0"?><Workbook xmlns="urn:schemas-microsoft-com:office:spreadsheet"/>"#
                .to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "one column twice",
            b"name,code,phone,latitude,longitude,council_name,Contact Phone\nA,B,1,-1.9,30.1,Gasabo,2\n"
                .to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
    ];
    // Each file read and refused leaves its trace in the audit trail (one over the size limit
    // is refused before it is read).
    let read_and_refused: Vec<String> = cases
        .iter()
        .filter(|(name, ..)| *name != "oversized")
        .map(|(_, _, _, code)| code.to_string())
        .collect();
    for (name, bytes, expected, code) in cases {
        let (status, body) = import(&app, &admin.token, "facilities.csv", bytes, "").await;
        assert_error(status, &body, expected, code);
        if name == "one column twice" {
            assert_eq!(
                body["error"]["details"]["file"],
                json!(["column `contact_phone` is given twice (columns C and G); keep one"]),
                "{name}"
            );
        }
        if name == "missing column" {
            let reasons = body["error"]["details"]["file"].to_string();
            assert!(
                reasons.contains("longitude") && reasons.contains("council_name"),
                "{name}: {body}"
            );
        }
        assert_eq!(facility_count(&app).await, 0, "{name}");
    }
    let audited: Vec<(Option<String>, Option<String>, Option<uuid::Uuid>)> = sqlx::query_as(
        "SELECT details->>'code', details->>'filename', actor_id FROM activities
         WHERE action = 'facility.import_refused' ORDER BY id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        audited
            .iter()
            .map(|(c, ..)| c.clone().unwrap())
            .collect::<Vec<_>>(),
        read_and_refused
    );
    assert!(
        audited
            .iter()
            .all(|(_, file, actor)| file.as_deref() == Some("facilities.csv")
                && *actor == Some(admin.id)),
        "{audited:?}"
    );
    let (status, body) = send(
        app.post("/api/facilities/import")
            .bearer_auth(&admin.token)
            .multipart(Form::new().text("other", "x")),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    // The limit is the file's, whatever the multipart framing around it adds: a file of exactly
    // the limit is read, one byte more is refused.
    let sized = |n: usize| {
        let mut text = String::from("name,code,latitude,longitude,council_name\n");
        for i in 0.. {
            if text.len() >= n {
                break;
            }
            text.push_str(&format!("Clinic {i},SZ-{i},-1.9,30.1,Gasabo\n"));
        }
        let mut bytes = text.into_bytes();
        bytes.truncate(n);
        bytes
    };
    let limit = 256 * 1024;
    let (status, body) = import(&app, &admin.token, "f.csv", sized(limit), "?dry_run=true").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = import(&app, &admin.token, "f.csv", sized(limit + 1), "").await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert_eq!(facility_count(&app).await, 0);
}

#[tokio::test]
async fn only_admins_import_or_manage_facilities() {
    let app = TestApp::spawn().await;
    let supervisor = app.user("supervisor", None).await;
    let (status, body) = import(
        &app,
        &supervisor.token,
        "f.csv",
        fixture("facilities_utf8.csv"),
        "",
    )
    .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, _) = send(app.post("/api/facilities").bearer_auth(&supervisor.token).json(&json!({
        "code": "X", "name": "X", "council_id": uuid::Uuid::new_v4(), "latitude": 0, "longitude": 0
    })))
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(facility_count(&app).await, 1, "only the helper's facility");
}

/// Holds the imports' lock as an import applying its rows does, until committed or dropped.
async fn an_import_applying(app: &TestApp) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut import = app.db.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(field_attendance::import::apply::IMPORT_LOCK)
        .execute(&mut *import)
        .await
        .unwrap();
    import
}

async fn gasabo(app: &TestApp) -> uuid::Uuid {
    sqlx::query_scalar("SELECT id FROM councils WHERE name = 'Gasabo'")
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_facility_type_is_one_type_however_it_is_written() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let council = gasabo(&app).await;
    let (status, created) = send(app.post("/api/facilities").bearer_auth(&admin.token).json(
        &json!({
            "code": "KGL-DH-1", "name": "Kibagabaga", "council_id": council, "type": "District \u{A0}Hospital",
            "latitude": -1.93, "longitude": 30.11,
        }),
    ))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["type"], "district_hospital");
    let (status, patched) = send(
        app.patch(&format!(
            "/api/facilities/{}",
            created["id"].as_str().unwrap()
        ))
        .bearer_auth(&admin.token)
        .json(&json!({"type": "Referral-Hospital"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["type"], "referral_hospital");
    for filter in [
        "referral_hospital",
        "Referral%20Hospital",
        "referral-hospital",
        "Referral%20%C2%A0Hospital",
        "referral__hospital",
    ] {
        let (_, page) = send(
            app.get(&format!("/api/facilities?type={filter}"))
                .bearer_auth(&admin.token),
        )
        .await;
        assert_eq!(page["total"], 1, "{filter}: {page}");
    }
    // A blank type, as an empty form field sends it, filters nothing; another type filters all.
    for (filter, expected) in [("", 1), ("%20", 1), ("district_hospital", 0)] {
        let (status, page) = send(
            app.get(&format!("/api/facilities?type={filter}"))
                .bearer_auth(&admin.token),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{filter}: {page}");
        assert_eq!(page["total"], expected, "{filter}: {page}");
    }
}

#[tokio::test]
async fn two_facilities_whose_codes_differ_only_in_case_never_both_go_in() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let council = gasabo(&app).await;
    let create = |code: &str| {
        send(app.post("/api/facilities").bearer_auth(&admin.token).json(&json!({
            "code": code, "name": code, "council_id": council, "latitude": -1.95, "longitude": 30.1,
        })))
    };
    // At once: one is stored, the other told why, neither a 500.
    let ((first, a), (second, b)) = tokio::join!(create("MSK-1"), create("msk-1"));
    let mut statuses = [first.as_u16(), second.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409], "{a} {b}");
    let refused = if first == StatusCode::CONFLICT {
        &a
    } else {
        &b
    };
    assert_eq!(refused["error"]["code"], "duplicate", "{refused}");
    // Renaming another facility to it is refused the same way, and changes nothing.
    let (status, other) = create("MSK-2").await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
    let (status, body) = send(
        app.patch(&format!(
            "/api/facilities/{}",
            other["id"].as_str().unwrap()
        ))
        .bearer_auth(&admin.token)
        .json(&json!({"code": "Msk-1", "name": "Renamed"})),
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "duplicate");
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM facilities WHERE lower(code) LIKE 'msk-%' ORDER BY code",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(names.len(), 2);
    assert!(!names.contains(&"Renamed".to_string()), "{names:?}");
}

#[tokio::test]
async fn admins_create_update_and_deactivate_facilities_with_case_insensitive_codes() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let council = gasabo(&app).await;
    let (status, created) = send(app.post("/api/facilities").bearer_auth(&admin.token).json(
        &json!({
            "code": "KGL-HC-777", "name": "Remera Health Centre", "council_id": council,
            "latitude": -1.9536, "longitude": 30.1128, "contact_email": "Remera@Example.org",
        }),
    ))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["geofence_radius_m"], 200);
    assert_eq!(created["status"], "active");
    assert_eq!(created["type"], "health_center");
    assert_eq!(created["council"]["region"]["name"], "Kigali City");
    let id = created["id"].as_str().unwrap().to_string();

    let (status, body) = send(app.post("/api/facilities").bearer_auth(&admin.token).json(&json!({
        "code": "kgl-hc-777", "name": "Copy", "council_id": council, "latitude": 0, "longitude": 0,
    })))
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "duplicate");

    let (status, body) = send(
        app.post("/api/facilities")
            .bearer_auth(&admin.token)
            .json(&json!({
                "code": "Y", "name": "Y", "council_id": council, "latitude": 91, "longitude": 181,
            })),
    )
    .await;
    assert_invalid(status, &body, "latitude");
    // A name of nothing visible is blank, whatever was pasted.
    let (status, body) = send(
        app.post("/api/facilities")
            .bearer_auth(&admin.token)
            .json(&json!({
                "code": "Z", "name": " \u{200B}\u{FEFF} ", "council_id": council,
                "latitude": 0, "longitude": 0,
            })),
    )
    .await;
    assert_invalid(status, &body, "name");
    let (status, body) = send(
        app.patch(&format!("/api/facilities/{id}"))
            .bearer_auth(&admin.token)
            .json(&json!({"name": "\u{2060}"})),
    )
    .await;
    assert_invalid(status, &body, "name");

    let (status, patched) = send(
        app.patch(&format!("/api/facilities/{id}"))
            .bearer_auth(&admin.token)
            .json(&json!({"geofence_radius_m": 350, "address": "KG 9 Ave", "contact_email": null})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(
        (
            patched["geofence_radius_m"].as_i64(),
            patched["address"].as_str()
        ),
        (Some(350), Some("KG 9 Ave"))
    );
    assert!(patched["contact_email"].is_null());

    let (status, _) = send(
        app.delete(&format!("/api/facilities/{id}"))
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, after) = send(
        app.get(&format!("/api/facilities/{id}"))
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(after["status"], "inactive");
}

/// An independent reference: the haversine formula with the mean Earth radius.
fn reference_haversine(a: (f64, f64), b: (f64, f64)) -> f64 {
    let r = 6_371_008.8_f64;
    let (p1, p2) = (a.0.to_radians(), b.0.to_radians());
    let dp = p2 - p1;
    let dl = (b.1 - a.1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * r * h.sqrt().asin()
}

#[tokio::test]
async fn facility_edits_report_every_bad_field_and_searches_cross_the_antimeridian() {
    let app = TestApp::spawn_with(|env| {
        env.insert("GEOFENCE_DEFAULT_RADIUS_M".into(), "300".into());
    })
    .await;
    let admin = app.admin().await;
    let council = gasabo(&app).await;
    let create = |body: Value| {
        send(
            app.post("/api/facilities")
                .bearer_auth(&admin.token)
                .json(&body),
        )
    };
    // Both coordinates wrong: both reported. A blank type is refused, as PATCH refuses it.
    let (status, body) = create(json!({"code": "X-1", "name": "X", "council_id": council,
        "latitude": 91.0, "longitude": 181.0, "type": "   "}))
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    let details = &body["error"]["details"];
    for field in ["latitude", "longitude", "type"] {
        assert!(details[field].is_array(), "{field}: {body}");
    }
    // The configured default radius, through the API and through an import alike.
    let (status, fiji) = create(json!({"code": "FJ-1", "name": "Taveuni East",
        "council_id": council, "latitude": -17.0, "longitude": -179.99}))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{fiji}");
    assert_eq!(fiji["geofence_radius_m"], 300);
    let (status, imported) = import(
        &app,
        &admin.token,
        "f.csv",
        fixture("facilities_utf8.csv"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{imported}");
    let radii: Vec<i32> = sqlx::query_scalar(
        "SELECT DISTINCT geofence_radius_m FROM facilities WHERE code LIKE 'KGL-%'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(radii, vec![300], "{imported}");
    // 2.1 km away across the antimeridian.
    let (status, found) = send(
        app.get("/api/facilities?near=-17,179.99&radius_m=5000")
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["data"][0]["code"], "FJ-1");
    for radius in ["0.5", "30000000"] {
        let (status, body) = send(
            app.get(&format!(
                "/api/facilities?near=-17,179.99&radius_m={radius}"
            ))
            .bearer_auth(&admin.token),
        )
        .await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
    }
    // A status change is its own action in the audit trail, with the fields sent.
    let id = fiji["id"].as_str().unwrap();
    let (status, body) = send(
        app.patch(&format!("/api/facilities/{id}"))
            .bearer_auth(&admin.token)
            .json(&json!({"status": "inactive", "name": "Taveuni East (closed)"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (action, details): (String, Value) = sqlx::query_as(
        "SELECT action, details FROM activities WHERE entity_type = 'facility' AND entity_id = $1
         ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .bind(uuid::Uuid::parse_str(id).unwrap())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(action, "facility.deactivate");
    assert_eq!(details["fields"], json!(["name", "status"]));
}

#[tokio::test]
async fn the_trail_names_each_status_change_as_it_happened_and_an_edit_changing_nothing_writes_nothing()
 {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let id = app.facility().await;
    let updated_at = || {
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
            "SELECT updated_at FROM facilities WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&app.db)
    };
    // Each PATCH, and the action it leaves in the trail (None: no row).
    let steps = [
        (json!({}), None),
        (json!({"status": "active"}), None),
        (json!({"status": "maintenance"}), Some("facility.update")),
        (json!({"status": "active"}), Some("facility.reactivate")),
        (json!({"status": "inactive"}), Some("facility.deactivate")),
        (json!({"status": "inactive"}), None),
        (json!({"status": "maintenance"}), Some("facility.update")),
        (json!({"status": "inactive"}), Some("facility.deactivate")),
    ];
    for (body, expected) in steps {
        let rows_before = app.actions().await.len();
        let stamped_before = updated_at().await.unwrap();
        let (status, answer) = send(
            app.patch(&format!("/api/facilities/{id}"))
                .bearer_auth(&admin.token)
                .json(&body),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}: {answer}");
        let actions = app.actions().await;
        match expected {
            Some(action) => {
                assert_eq!(actions.len(), rows_before + 1, "{body}");
                assert_eq!(actions.last().map(String::as_str), Some(action), "{body}");
            }
            None => {
                assert_eq!(actions.len(), rows_before, "{body}: {actions:?}");
                assert_eq!(updated_at().await.unwrap(), stamped_before, "{body}");
            }
        }
    }
}

#[tokio::test]
async fn near_sorts_by_great_circle_distance_within_a_metre_of_the_reference() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    import_sample(&app, &admin).await;
    import(
        &app,
        &admin.token,
        "f.csv",
        fixture("facilities_utf8_bom.csv"),
        "",
    )
    .await;
    let origin = (-1.9441, 30.0619); // Kigali city centre
    let (status, body) = send(
        app.get(&format!(
            "/api/facilities?near={},{}&per_page=100",
            origin.0, origin.1
        ))
        .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 6);
    let distances: Vec<f64> = data
        .iter()
        .map(|f| f["distance_m"].as_f64().unwrap())
        .collect();
    assert!(distances.windows(2).all(|w| w[0] <= w[1]), "{distances:?}");
    for f in data {
        let expected = reference_haversine(
            origin,
            (
                f["latitude"].as_f64().unwrap(),
                f["longitude"].as_f64().unwrap(),
            ),
        );
        assert!(
            (f["distance_m"].as_f64().unwrap() - expected).abs() < 1.0,
            "{}",
            f["code"]
        );
    }
    assert_eq!(data[0]["code"], "KGL-HOS-001");

    let (_, within) = send(
        app.get(&format!(
            "/api/facilities?near={},{}&radius_m=10000",
            origin.0, origin.1
        ))
        .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(within["total"], 4, "the Kigali facilities only: {within}");
    let (status, plain) = send(
        app.get("/api/facilities?q=health")
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{plain}");
    let listed = plain["data"].as_array().unwrap();
    assert!(!listed.is_empty(), "{plain}");
    assert!(
        listed.iter().all(|f| f.get("distance_m").is_none()),
        "{plain}"
    );
    let (status, body) = send(
        app.get("/api/facilities?near=north")
            .bearer_auth(&admin.token),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
}

#[tokio::test]
async fn the_command_line_import_prints_the_report() {
    let app = TestApp::spawn().await;
    let stdout = app.cli(&[
        "import-facilities",
        "tests/fixtures/facilities_utf8.csv",
        "--on-duplicate",
        "update",
    ]);
    let report: Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(
        (report["created"].as_u64(), report["failed"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(facility_count(&app).await, 4);
    // In the audit trail as an API import is, with no actor.
    let audited: (Option<uuid::Uuid>, Option<String>, Option<i64>) = sqlx::query_as(
        "SELECT actor_id, details->>'via', (details->>'created')::bigint FROM activities
         WHERE action = 'facility.import'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(audited, (None, Some("command line".into()), Some(4)));
    let missing = std::env::temp_dir().join(format!("no-council-{}.csv", uuid::Uuid::new_v4()));
    std::fs::write(&missing, "name,code,latitude\nClinic,C-1,-1.9\n").unwrap();
    let error = app.cli_refused(&["import-facilities", missing.to_str().unwrap()]);
    std::fs::remove_file(&missing).unwrap();
    assert!(
        error.contains("longitude") && error.contains("council_name"),
        "the refusal names the missing columns: {error}"
    );
}

#[tokio::test]
async fn a_facility_created_while_an_import_applies_waits_for_it() {
    // An import that read the stored facilities must not meet one created since under a code
    // of its file: it would overwrite the new facility's type with the file's default.
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let council = gasabo(&app).await;
    let import = an_import_applying(&app).await;
    let create = tokio::spawn(
        app.post("/api/facilities")
            .bearer_auth(&admin.token)
            .json(&json!({
                "code": "KGL-DH-9", "name": "Masaka", "council_id": council, "type": "hospital",
                "latitude": -1.98, "longitude": 30.2,
            }))
            .send(),
    );
    app.until_waiting_on_locks(1, "the facility waits for the import")
        .await;
    assert!(!create.is_finished(), "the facility waits for the import");
    import.commit().await.unwrap();
    let response = create.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_facility_write_cut_while_an_import_applies_leaves_no_transaction_behind() {
    let app = TestApp::spawn_timing_out_after_a_second().await;
    let admin = app.admin().await;
    let council = gasabo(&app).await;
    let before = facility_count(&app).await;
    let import = an_import_applying(&app).await;
    let (status, body) = send(
        app.post("/api/facilities")
            .bearer_auth(&admin.token)
            .json(&json!({
                "code": "KGL-DH-8", "name": "Muhima", "council_id": council, "type": "hospital",
                "latitude": -1.98, "longitude": 30.2,
            })),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    import.commit().await.unwrap();
    // The write's connection went back to the pool out of its transaction, not holding the
    // imports' lock: the next import can take it.
    app.until_no_session_in_a_transaction().await;
    let mut next = app.db.begin().await.unwrap();
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(field_attendance::import::apply::IMPORT_LOCK)
        .fetch_one(&mut *next)
        .await
        .unwrap();
    assert!(free, "the next import is not kept waiting");
    next.rollback().await.unwrap();
    assert_eq!(facility_count(&app).await, before);
}

#[tokio::test]
async fn an_import_whose_request_times_out_still_ends_whole_and_reported() {
    let app = TestApp::spawn_with(|env| {
        env.insert("UPLOAD_TIMEOUT_SECS".into(), "1".into());
    })
    .await;
    let admin = app.admin().await;
    let rows = 2_000;
    let mut csv = String::from("name,code,latitude,longitude,council_name\n");
    for i in 0..rows {
        csv.push_str(&format!("Centre {i},TO-{i},-1.9,30.1,Gasabo\n"));
    }
    // Another import holds the facilities past the request's time limit.
    let other = an_import_applying(&app).await;
    let (status, body) = import(&app, &admin.token, "big.csv", csv.into_bytes(), "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(facility_count(&app).await, 0);
    other.commit().await.unwrap();
    // The import goes on without its request: all of it lands, with its report.
    let started = std::time::Instant::now();
    loop {
        let reported: Option<i32> =
            sqlx::query_scalar("SELECT created FROM facility_imports WHERE filename = 'big.csv'")
                .fetch_optional(&app.db)
                .await
                .unwrap();
        if let Some(created) = reported {
            assert_eq!(created, rows);
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the import never ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(facility_count(&app).await, i64::from(rows));
}

#[tokio::test]
async fn a_name_with_letters_rust_and_postgres_lower_differently_finds_itself() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let facility = app.facility().await;
    let worker = app.user("focal", None).await;
    let name = "İNKA ΟΔΟΣ Health Post";
    let (status, body) = send(
        app.patch(&format!("/api/facilities/{facility}"))
            .bearer_auth(&admin.token)
            .json(&json!({"name": name})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send(
        app.patch(&format!("/api/users/{}", worker.id))
            .bearer_auth(&admin.token)
            .json(&json!({"last_name": "İNAN ΟΔΟΣ"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (path, q, id) in [
        ("facilities", "İNKA ΟΔΟΣ", facility.to_string()),
        ("users", "İNAN ΟΔΟΣ", worker.id.to_string()),
    ] {
        let (status, body) = send(
            app.get(&format!("/api/{path}"))
                .query(&[("q", q)])
                .bearer_auth(&admin.token),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["total"], 1, "{path}: {body}");
        assert_eq!(body["data"][0]["id"], json!(id));
    }
}

#[tokio::test]
async fn null_for_a_field_that_cannot_be_cleared_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let facility = app.facility().await;
    let worker = app.user("focal", None).await;
    let edits = [
        (
            format!("/api/facilities/{facility}"),
            &admin,
            json!({"geofence_radius_m": null, "address": "Plot 4"}),
            "geofence_radius_m",
        ),
        (
            format!("/api/facilities/{facility}"),
            &admin,
            json!({"status": null}),
            "status",
        ),
        (
            format!("/api/users/{}", worker.id),
            &admin,
            json!({"last_name": null}),
            "last_name",
        ),
        (
            "/api/users/me".to_string(),
            &worker,
            json!({"first_name": null}),
            "first_name",
        ),
    ];
    for (path, who, body, field) in edits {
        let (status, answer) = send(app.patch(&path).bearer_auth(&who.token).json(&body)).await;
        assert_error(
            status,
            &answer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert!(answer["error"]["details"][field].is_array(), "{answer}");
    }
    let (address, edits): (Option<String>, i64) = sqlx::query_as(
        "SELECT (SELECT address FROM facilities WHERE id = $1),
                (SELECT count(*) FROM activities WHERE action IN ('facility.update', 'user.update'))",
    )
    .bind(facility)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((address.as_deref(), edits), (None, 0));
}

#[tokio::test]
async fn uploads_past_their_own_limit_are_refused_with_when_to_try_again() {
    let app = TestApp::spawn_with(|env| {
        env.insert("RATE_LIMIT_ENABLED".into(), "true".into());
        env.insert("RATE_LIMIT_UPLOAD".into(), "2/15m".into());
        // As few as the uploads: were they spent from it too, nothing would be left after them.
        env.insert("RATE_LIMIT_API".into(), "2/15m".into());
    })
    .await;
    let admin = app.admin().await;
    let csv = b"name,code,type,latitude,longitude,council_name\nKacyiru HC,UPL-1,health_center,-1.94,30.06,Gasabo\n";
    let upload = || {
        let form = Form::new().part("file", Part::bytes(csv.to_vec()).file_name("f.csv"));
        app.post("/api/facilities/import?dry_run=true")
            .bearer_auth(&admin.token)
            .multipart(form)
            .send()
    };
    let mut remaining = Vec::new();
    for _ in 0..2 {
        let response = upload().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-ratelimit-limit"], "2");
        remaining.push(
            response.headers()["x-ratelimit-remaining"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(remaining, ["1", "0"]);
    let response = upload().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // One upload's share of the period: 450 s at 2 per 15 minutes.
    assert!((1..=450).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // The general API still answers the same admin, its budget whole: uploads have their own.
    let response = app
        .get("/api/facilities")
        .bearer_auth(&admin.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-ratelimit-remaining"], "1");
}

#[tokio::test]
async fn a_nul_character_in_a_query_parameter_is_refused_naming_it() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    for (path, name) in [
        ("/api/facilities?page=1&q=%00", "q"),
        ("/api/users?q=a%00b", "q"),
        ("/api/activities?action=%00", "action"),
    ] {
        let (status, body) = send(app.get(path).bearer_auth(&admin.token)).await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert!(body["error"]["details"][name].is_array(), "{path}: {body}");
    }
}

#[tokio::test]
async fn a_code_pasted_with_other_spaces_is_the_same_facility_and_a_council_contradiction_is_a_row_error()
 {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let csv = "name,code,latitude,longitude,council_name,council_code\n\
               Kimironko HC,KGL HC 001,-1.95,30.11,Gasabo,RW-0102\n";
    let (status, report) = import(&app, &admin.token, "first.csv", csv.into(), "").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["created"], 1, "{report}");

    // The code again, with a non-breaking space and a zero-width one pasted from a web page;
    // and a row whose council name and code name two councils.
    let csv = "name,code,latitude,longitude,council_name,council_code\n\
               Kimironko HC,KGL\u{A0}HC\u{200B} 001,-1.95,30.11,Gasabo,RW-0102\n\
               Remera HC,HC-77,-1.95,30.11,Gasabo,RW-0504\n";
    let (status, report) = import(&app, &admin.token, "again.csv", csv.into(), "").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        (report["created"].as_u64(), report["skipped"].as_u64()),
        (Some(0), Some(1)),
        "{report}"
    );
    assert_eq!(errors(&report), vec![(3, "council_code".into())]);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM facilities")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 1);

    // So does the endpoint: the code pasted so is the one already taken.
    let council: uuid::Uuid = sqlx::query_scalar("SELECT id FROM councils WHERE code = 'RW-0102'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let (status, body) = send(
        app.post("/api/facilities")
            .bearer_auth(&admin.token)
            .json(&json!({
                "code": "\u{FEFF}KGL\u{A0}HC  001", "name": "Twin", "latitude": -1.95,
                "longitude": 30.11, "council_id": council,
            })),
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "duplicate");
}

#[tokio::test]
async fn facility_search_sets_accents_and_case_aside() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let csv = "name,code,latitude,longitude,council_name\n\
               Centre de Santé Gikondo,CS-GIK,-1.97,30.07,Kicukiro\n\
               Kimironko HC,HC-KIM,-1.95,30.12,Gasabo\n";
    let (status, report) = import(&app, &admin.token, "list.csv", csv.into(), "").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["created"], 2, "{report}");
    for typed in ["sante", "SANTÉ", "santé gik", "cs-gik"] {
        let (status, body) = send(
            app.get(&format!("/api/facilities?q={typed}"))
                .bearer_auth(&admin.token),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let codes: Vec<&str> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, ["CS-GIK"], "{typed}");
    }
}

#[tokio::test]
async fn a_file_coming_up_slower_than_the_request_time_limit_is_still_imported() {
    let app = TestApp::spawn_timing_out_after_a_second().await;
    let admin = app.admin().await;
    let boundary = "slow-link";
    let head = format!(
        "--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"slow.csv\"\r\n\
         content-type: text/csv\r\n\r\nname,code,latitude,longitude,council_name\r\n"
    );
    let tail = format!("--{boundary}--\r\n");
    // The file arrives over three seconds, as over a slow link, each part after a pause.
    let parts = vec![
        head,
        "Slow Centre A,SL-1,-1.9,30.1,Gasabo\r\n".to_string(),
        format!("Slow Centre B,SL-2,-1.9,30.1,Gasabo\r\n\r\n{tail}"),
    ];
    let trickle = futures::stream::iter(parts).then(|part| async move {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        Ok::<_, std::io::Error>(part)
    });
    let (status, body) = send(
        app.post("/api/facilities/import")
            .bearer_auth(&admin.token)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(reqwest::Body::wrap_stream(trickle)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["created"], 2, "{body}");
    // (Other routes keep the one second: see the export's and the clock-in queue's tests.)
}

#[tokio::test]
async fn the_facility_list_filters_by_council_region_and_status_and_pages_with_its_total() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let gasabo = gasabo(&app).await;
    let (elsewhere, kigali, other_region): (uuid::Uuid, uuid::Uuid, uuid::Uuid) = sqlx::query_as(
        "SELECT c.id, (SELECT id FROM regions WHERE name = 'Kigali City'), r.id
         FROM councils c JOIN regions r ON r.id = c.region_id
         WHERE r.name <> 'Kigali City' ORDER BY c.name LIMIT 1",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    let create = |code: &str, council: uuid::Uuid| {
        app.post("/api/facilities")
            .bearer_auth(&admin.token)
            .json(&json!({
                "code": code, "name": format!("Filter clinic {code}"), "council_id": council,
                "latitude": -1.95, "longitude": 30.1,
            }))
    };
    let mut ids = vec![];
    for (code, council) in [
        ("FL-1", gasabo),
        ("FL-2", gasabo),
        ("FL-3", gasabo),
        ("FL-4", elsewhere),
    ] {
        let (status, body) = send(create(code, council)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    let (status, _) = send(
        app.delete(&format!("/api/facilities/{}", ids[2]))
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let codes = |query: String| {
        let request = app
            .get(&format!("/api/facilities?q=filter&{query}"))
            .bearer_auth(&admin.token);
        async move {
            let (status, body) = send(request).await;
            assert_eq!(status, StatusCode::OK, "{query}: {body}");
            let codes: Vec<String> = body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["code"].as_str().unwrap().to_string())
                .collect();
            (codes, body["total"].as_i64().unwrap())
        }
    };
    assert_eq!(
        codes(format!("council_id={gasabo}")).await,
        (vec!["FL-1".into(), "FL-2".into(), "FL-3".into()], 3)
    );
    assert_eq!(
        codes(format!("region_id={kigali}&status=active")).await,
        (vec!["FL-1".into(), "FL-2".into()], 2)
    );
    assert_eq!(
        codes("status=inactive".into()).await,
        (vec!["FL-3".into()], 1)
    );
    assert_eq!(
        codes(format!("region_id={other_region}")).await,
        (vec!["FL-4".into()], 1)
    );
    // A page of two of four, and a page past the end: the total of them all either way.
    assert_eq!(
        codes("per_page=2&page=2".into()).await,
        (vec!["FL-3".into(), "FL-4".into()], 4)
    );
    assert_eq!(codes("per_page=2&page=9".into()).await, (vec![], 4));
}

#[tokio::test]
async fn facility_writes_refuse_unknown_fields_and_only_admins_close_a_facility_that_exists() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let supervisor = app.user("supervisor", None).await;
    let council = gasabo(&app).await;
    let (status, body) = send(
        app.post("/api/facilities")
            .bearer_auth(&admin.token)
            .json(&json!({
                "code": "UF-1", "name": "Unknown fields", "council_id": council,
                "latitude": 0, "longitude": 0, "status_reason": "mass assignment",
            })),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM facilities WHERE code = 'UF-1'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    let facility = app.facility().await;
    let (status, body) = send(
        app.patch(&format!("/api/facilities/{facility}"))
            .bearer_auth(&admin.token)
            .json(&json!({"name": "Renamed", "created_at": "2000-01-01T00:00:00Z"})),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    let (status, stored) = send(
        app.get(&format!("/api/facilities/{facility}"))
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    let name = stored["name"].as_str().unwrap();
    assert!(
        name.starts_with("Test facility"),
        "nothing of a refused edit is kept: {stored}"
    );
    let (status, body) = send(
        app.delete(&format!("/api/facilities/{facility}"))
            .bearer_auth(&supervisor.token),
    )
    .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, body) = send(
        app.delete(&format!("/api/facilities/{}", uuid::Uuid::new_v4()))
            .bearer_auth(&admin.token),
    )
    .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (_, stored) = send(
        app.get(&format!("/api/facilities/{facility}"))
            .bearer_auth(&admin.token),
    )
    .await;
    assert_eq!(stored["status"], "active");
}

#[tokio::test]
async fn an_edit_sending_back_a_code_kept_unnormalised_saves_the_rest() {
    // A code an earlier version stored with a double space, kept so since normalising it would
    // make it another facility's.
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (spaced, other) = (app.facility().await, app.facility().await);
    for (id, code) in [(other, "KGL HC 001"), (spaced, "KGL  HC 001")] {
        sqlx::query("UPDATE facilities SET code = $2 WHERE id = $1")
            .bind(id)
            .bind(code)
            .execute(&app.db)
            .await
            .unwrap();
    }
    // The admin's form sends the code back as it shows it, with a new name.
    let (status, body) = send(
        app.patch(&format!("/api/facilities/{spaced}"))
            .bearer_auth(&admin.token)
            .json(&json!({"code": "KGL  HC 001", "name": "Kimironko annexe"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "Kimironko annexe");
    assert_eq!(body["code"], "KGL  HC 001");
    // Made the other's code, it is refused as a duplicate.
    let (status, body) = send(
        app.patch(&format!("/api/facilities/{spaced}"))
            .bearer_auth(&admin.token)
            .json(&json!({"code": "kgl hc 001"})),
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "duplicate");
}
