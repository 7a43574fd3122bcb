//! Extractors whose rejections speak the contract's error envelope.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use validator::Validate;

use crate::error::{ApiError, FieldErrors};

/// JSON body: 400 for malformed JSON or a non-JSON content type, 413 past the body limit,
/// 422 naming the field for well-formed JSON of the wrong shape (unknown fields included).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime::Mime>().ok())
            .is_some_and(|m| {
                m.type_() == "application"
                    && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json"))
            });
        if !is_json {
            return Err(ApiError::BadRequest(
                "expected a JSON body with `Content-Type: application/json`".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest("the request body could not be read".into())
            }
        })?;
        parse_json(&bytes).map(Json)
    }
}

/// Parses JSON with the path of the first offending field, so a 422 can name it.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde would also read a struct from an array of its fields; every body here is an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(json_error)?;
    // Anything after the object but whitespace is malformed, not ignored.
    de.end().map_err(|e| malformed(&e))?;
    Ok(value)
}

/// A 422 naming the offending field for data that does not fit, a 400 for malformed JSON.
fn json_error(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    match inner.classify() {
        serde_json::error::Category::Data => {
            let message = inner.to_string();
            let (field, reason) = match (unknown_field(&message), missing_field(&message)) {
                // The path already ends with the unknown field's name.
                (Some(name), _) => (
                    if path == "." { name } else { path },
                    "is not a field of this request".to_string(),
                ),
                // The path is the object that lacks it.
                (None, Some(name)) => (
                    if path == "." {
                        name
                    } else {
                        format!("{path}.{name}")
                    },
                    "is required".to_string(),
                ),
                (None, None) => (
                    if path == "." {
                        "body".to_string()
                    } else {
                        path
                    },
                    strip_position(&message),
                ),
            };
            let mut details = FieldErrors::new();
            details.insert(field, vec![reason]);
            ApiError::Validation(details)
        }
        _ => malformed(&inner),
    }
}

fn malformed(e: &serde_json::Error) -> ApiError {
    ApiError::BadRequest(format!(
        "malformed JSON: {}",
        strip_position(&e.to_string())
    ))
}

fn unknown_field(message: &str) -> Option<String> {
    quoted_after(message, "unknown field `")
}

fn missing_field(message: &str) -> Option<String> {
    quoted_after(message, "missing field `")
}

/// The name serde quotes after `prefix`, as in "unknown field `x`, expected …".
fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    Some(rest[..rest.find('`')?].to_string())
}

/// serde_json appends " at line 1 column 9"; useful in logs, noise for a client.
fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        let mut response = axum::Json(self.0).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, JSON_UTF8.clone());
        response
    }
}

/// The contract's content type for every JSON answer.
pub static JSON_UTF8: header::HeaderValue =
    header::HeaderValue::from_static("application/json; charset=utf-8");

/// For `#[serde(default, deserialize_with = ...)]` on `Option<Option<T>>`: tells an absent field
/// (`None`, leave it alone) from an explicit `null` (`Some(None)`, clear it).
pub fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

/// For `#[serde(default, deserialize_with = ...)]` on an `Option<T>` field that may be left out
/// but never cleared: `null` is refused (422 naming the field), not read as "leave it alone".
pub fn not_null<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    match <Option<T> as serde::Deserialize>::deserialize(d)? {
        Some(value) => Ok(Some(value)),
        None => Err(D::Error::custom(
            "cannot be null; leave it out to keep the value",
        )),
    }
}

/// A JSON body that must also pass its `validator` rules (422 with every failing field).
#[derive(Debug, Clone, Copy, Default)]
pub struct ValidJson<T>(pub T);

impl<T, S> FromRequest<S> for ValidJson<T>
where
    T: DeserializeOwned + Validate,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        value.validate()?;
        Ok(ValidJson(value))
    }
}

/// Query string: 400 `bad_request` naming what did not parse (an empty value included: the
/// spec types every parameter, and `?role=` is not a role); 422 naming a parameter that holds a
/// NUL character, which no text filter could match (Postgres text cannot hold one).
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // A well-formed value no filter could match: 422 naming its parameter.
        if let Some(pair) = parts
            .uri
            .query()
            .and_then(|q| q.split('&').find(|pair| pair.contains("%00")))
        {
            let name = pair.split('=').next().unwrap_or_default();
            return Err(ApiError::invalid(name, "must not contain NUL characters"));
        }
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(format!("invalid query string: {}", rejection.body_text()))
    }
}

/// Path parameters: 400 `bad_request` when an id is not a UUID.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest(format!("invalid path parameter: {}", rejection.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Patch {
        first_name: Option<String>,
        age: Option<u8>,
    }

    fn details(err: ApiError) -> FieldErrors {
        match err {
            ApiError::Validation(d) => d,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn an_unknown_field_is_a_validation_error_naming_it() {
        let d = details(parse_json::<Patch>(br#"{"role":"admin"}"#).unwrap_err());
        assert!(d.contains_key("role"), "{d:?}");
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let d = details(parse_json::<Patch>(br#"{"age":"old"}"#).unwrap_err());
        assert!(d.contains_key("age"), "{d:?}");
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Point {
        latitude: f64,
        longitude: f64,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Located {
        latitude: f64,
        place: Option<Point>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Edit {
        #[serde(default, deserialize_with = "super::not_null")]
        radius: Option<i32>,
        #[serde(default, deserialize_with = "super::not_null")]
        role: Option<crate::domain::Role>,
        #[serde(default, deserialize_with = "super::not_null")]
        name: Option<String>,
    }

    #[test]
    fn null_for_a_field_that_cannot_be_cleared_names_the_field() {
        for (body, field) in [
            (&br#"{"radius": null}"#[..], "radius"),
            (br#"{"name": null, "radius": 3}"#, "name"),
            (br#"{"role": null}"#, "role"),
        ] {
            let d = details(parse_json::<Edit>(body).unwrap_err());
            assert!(d[field][0].contains("cannot be null"), "{d:?}");
        }
        let edit = parse_json::<Edit>(br#"{"radius": 3}"#).unwrap();
        assert_eq!((edit.radius, edit.name), (Some(3), None));
    }

    #[test]
    fn a_missing_field_is_named_where_it_is_missing() {
        let d = details(parse_json::<Located>(br#"{"place": null}"#).unwrap_err());
        assert_eq!(
            d.get("latitude"),
            Some(&vec!["is required".to_string()]),
            "{d:?}"
        );
        let nested = br#"{"latitude": 1, "place": {"latitude": 2}}"#;
        let d = details(parse_json::<Located>(nested).unwrap_err());
        assert!(d.contains_key("place.longitude"), "{d:?}");
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        let err = parse_json::<Patch>(br#"{"first_name": "#).unwrap_err();
        assert!(matches!(err, ApiError::BadRequest(_)), "{err:?}");
    }
}
