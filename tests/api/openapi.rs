//! The committed `openapi.yaml` is what the code generates.

#[test]
fn the_committed_openapi_yaml_matches_the_code() {
    let generated = field_attendance::openapi::yaml().expect("spec renders as YAML");
    let committed = std::fs::read_to_string("openapi.yaml").unwrap_or_default();
    assert!(
        generated == committed,
        "openapi.yaml is out of date: regenerate it with `cargo run -- openapi > openapi.yaml`"
    );
}

#[test]
fn lists_name_their_items_schema_and_every_answer_documents_its_request_id() {
    let spec = serde_json::to_value(field_attendance::openapi::spec()).unwrap();
    let schemas = spec["components"]["schemas"].as_object().unwrap();
    let pages: Vec<&String> = schemas.keys().filter(|k| k.starts_with("Page_")).collect();
    assert!(pages.len() >= 8, "{pages:?}");
    for page in pages {
        let item = page.trim_start_matches("Page_");
        assert_eq!(
            schemas[page]["properties"]["data"]["items"],
            serde_json::json!({ "$ref": format!("#/components/schemas/{item}") }),
            "{page}"
        );
    }
    let mut answers = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                answers += 1;
                assert!(
                    response["headers"].get("x-request-id").is_some(),
                    "{method} {path} {status}"
                );
            }
        }
    }
    assert!(answers > 300, "{answers}");
}
