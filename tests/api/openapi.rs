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
