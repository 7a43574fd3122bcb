//! Facilities with their council and region, and the facility search.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, PgPool, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::cache::TtlMap;
use crate::db::users::{CouncilRef, RegionRef, push_containing};
use crate::domain::GeoPoint;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FacilityStatus {
    Active,
    Inactive,
    Maintenance,
}

impl FacilityStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FacilityStatus::Active => "active",
            FacilityStatus::Inactive => "inactive",
            FacilityStatus::Maintenance => "maintenance",
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Facility {
    pub id: Uuid,
    #[schema(example = "KGL-HC-001")]
    pub code: String,
    #[schema(example = "Kimironko Health Centre")]
    pub name: String,
    #[serde(rename = "type")]
    #[schema(example = "health_center")]
    pub facility_type: String,
    #[schema(example = -1.9456)]
    pub latitude: f64,
    #[schema(example = 30.127)]
    pub longitude: f64,
    #[schema(example = 200)]
    pub geofence_radius_m: i32,
    #[schema(required = true)]
    pub address: Option<String>,
    #[schema(required = true)]
    pub contact_phone: Option<String>,
    #[schema(required = true)]
    pub contact_email: Option<String>,
    #[schema(value_type = FacilityStatus)]
    pub status: String,
    pub council: CouncilRef,
    /// Great-circle distance from `near`, when the list was asked for with `near`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub distance_m: Option<f64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct FacilityRow {
    id: Uuid,
    code: String,
    name: String,
    #[sqlx(rename = "type")]
    facility_type: String,
    latitude: f64,
    longitude: f64,
    geofence_radius_m: i32,
    address: Option<String>,
    contact_phone: Option<String>,
    contact_email: Option<String>,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    council_id: Uuid,
    council_name: String,
    region_id: Uuid,
    region_name: String,
    #[sqlx(default)]
    distance_m: Option<f64>,
    #[sqlx(default)]
    total: Option<i64>,
}

impl FacilityRow {
    pub(crate) fn id(&self) -> Uuid {
        self.id
    }
}

impl From<FacilityRow> for Facility {
    fn from(r: FacilityRow) -> Self {
        Facility {
            id: r.id,
            code: r.code,
            name: r.name,
            facility_type: r.facility_type,
            latitude: r.latitude,
            longitude: r.longitude,
            geofence_radius_m: r.geofence_radius_m,
            address: r.address,
            contact_phone: r.contact_phone,
            contact_email: r.contact_email,
            status: r.status,
            council: CouncilRef {
                id: r.council_id,
                name: r.council_name,
                region: RegionRef {
                    id: r.region_id,
                    name: r.region_name,
                },
            },
            distance_m: r.distance_m,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

pub(crate) const SELECT_FACILITY: &str = "
    SELECT f.id, f.code, f.name, f.type, f.latitude, f.longitude, f.geofence_radius_m, f.address,
           f.contact_phone, f.contact_email, f.status, f.created_at, f.updated_at,
           c.id AS council_id, c.name AS council_name, r.id AS region_id, r.name AS region_name";

pub(crate) const FROM_FACILITIES: &str = "
    FROM facilities f
    JOIN councils c ON c.id = f.council_id
    JOIN regions r ON r.id = c.region_id";

/// A facility as the geofence sees it: shared by online clock-in/out, sync pushes and
/// conflict resolution, so every path measures the same way.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Site {
    pub id: Uuid,
    pub latitude: f64,
    pub longitude: f64,
    pub geofence_radius_m: i32,
    pub status: String,
    /// When `status` last changed.
    pub status_changed_at: DateTime<Utc>,
}

const SITE_COLUMNS: &str = "id, latitude, longitude, geofence_radius_m, status, status_changed_at";

/// The geofences this instance read recently, by facility id (see [`crate::cache`]): every
/// clock-in, clock-out and sync push reads one, and facilities rarely change. This instance's
/// facility writes and imports drop their entries at once.
pub struct SiteCache {
    sites: TtlMap<Uuid, Site>,
}

impl SiteCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            sites: TtlMap::new(ttl, 100_000),
        }
    }

    pub async fn get<'e>(
        &self,
        db: impl PgExecutor<'e>,
        id: Uuid,
    ) -> Result<Option<Site>, sqlx::Error> {
        Ok(self.get_many(db, &[id]).await?.remove(&id))
    }

    /// The facilities with these ids, by id; one query for those not cached.
    pub async fn get_many<'e>(
        &self,
        db: impl PgExecutor<'e>,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, Site>, sqlx::Error> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        for id in ids {
            match self.sites.get(id) {
                Some(site) => {
                    found.insert(*id, site);
                }
                None => missing.push(*id),
            }
        }
        if !missing.is_empty() {
            let generation = self.sites.generation();
            let rows: Vec<Site> = sqlx::query_as(&format!(
                "SELECT {SITE_COLUMNS} FROM facilities WHERE id = ANY($1)"
            ))
            .bind(missing)
            .fetch_all(db)
            .await?;
            for site in rows {
                self.sites.insert_since(site.id, site.clone(), generation);
                found.insert(site.id, site);
            }
        }
        Ok(found)
    }

    pub fn forget(&self, id: Uuid) {
        self.sites.remove(&id);
    }

    pub fn clear(&self) {
        self.sites.clear();
    }
}

impl Site {
    /// Why a shift begun at `clock_in_at` is not taken here: the facility was closed (inactive,
    /// or under maintenance) before it began.
    pub fn closed_before(&self, clock_in_at: DateTime<Utc>) -> Option<String> {
        let status = match self.status.as_str() {
            "active" => return None,
            "maintenance" => "under maintenance",
            other => other,
        };
        (clock_in_at >= self.status_changed_at).then(|| {
            format!(
                "the facility is {status}, closed since {} (before this shift began), and takes \
                 no clock-ins",
                self.status_changed_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        })
    }

    /// Distance from the facility to `point`, in metres, and whether it is outside the geofence.
    pub fn measure(&self, point: GeoPoint) -> (f64, bool) {
        let here = GeoPoint {
            latitude: self.latitude,
            longitude: self.longitude,
        };
        let distance = here.distance_m(&point);
        (
            distance,
            crate::domain::attendance::outside_geofence(distance, self.geofence_radius_m),
        )
    }
}

pub async fn find<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<Option<Facility>, sqlx::Error> {
    let sql = format!("{SELECT_FACILITY} {FROM_FACILITIES} WHERE f.id = $1");
    let row: Option<FacilityRow> = sqlx::query_as(&sql).bind(id).fetch_optional(db).await?;
    Ok(row.map(Facility::from))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FacilityFilter {
    /// Matches part of a name or code, whatever the case and accents (`sante` finds Santé).
    pub q: Option<String>,
    pub council_id: Option<Uuid>,
    pub region_id: Option<Uuid>,
    /// A type, keyed as it is stored (`Health Center` finds `health_center`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub facility_type: Option<String>,
    pub status: Option<FacilityStatus>,
    /// `LAT,LNG`: sort by distance from this point and add `distance_m`.
    #[param(example = "-1.9441,30.0619")]
    pub near: Option<String>,
    /// With `near`: only facilities within this many metres.
    #[param(minimum = 1, maximum = 20037509)]
    pub radius_m: Option<f64>,
    #[param(minimum = 1, maximum = 100000, default = 1)]
    pub page: Option<u32>,
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub per_page: Option<u32>,
}

/// The SQL twin of [`GeoPoint::distance_m`] (same formula and Earth radius).
fn push_distance(qb: &mut QueryBuilder<'_, sqlx::Postgres>, near: GeoPoint) {
    qb.push("(2 * 6371008.8 * asin(least(1, sqrt(power(sin(radians(f.latitude - ");
    qb.push_bind(near.latitude);
    qb.push(") / 2), 2) + cos(radians(");
    qb.push_bind(near.latitude);
    qb.push(")) * cos(radians(f.latitude)) * power(sin(radians(f.longitude - ");
    qb.push_bind(near.longitude);
    qb.push(") / 2), 2)))))");
}

pub async fn search(
    db: &PgPool,
    filter: &FacilityFilter,
    near: Option<GeoPoint>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Facility>, i64), sqlx::Error> {
    // The window count runs after the radius filter and before LIMIT: the total of all pages.
    let mut qb = QueryBuilder::new("SELECT found.*, count(*) OVER () AS total FROM ");
    push_found(&mut qb, filter, near);
    qb.push(if near.is_some() {
        " ORDER BY distance_m, id"
    } else {
        " ORDER BY name, id"
    });
    qb.push(" LIMIT ")
        .push_bind(limit)
        .push(" OFFSET ")
        .push_bind(offset);
    let rows: Vec<FacilityRow> = qb.build_query_as().fetch_all(db).await?;
    let first = rows.first().map(|r| r.total.unwrap_or(0));
    let total = super::window_total(first, offset, async || {
        let mut qb = QueryBuilder::new("SELECT count(*) FROM ");
        push_found(&mut qb, filter, near);
        qb.build_query_scalar().fetch_one(db).await
    })
    .await?;
    Ok((rows.into_iter().map(Facility::from).collect(), total))
}

/// The facilities matching a search, as `(...) AS found`, with `distance_m` when `near` is
/// given.
fn push_found(
    qb: &mut QueryBuilder<'_, sqlx::Postgres>,
    filter: &FacilityFilter,
    near: Option<GeoPoint>,
) {
    qb.push("(");
    qb.push(SELECT_FACILITY);
    if let Some(point) = near {
        qb.push(", ");
        push_distance(qb, point);
        qb.push(" AS distance_m");
    }
    qb.push(FROM_FACILITIES);
    qb.push(" WHERE true");
    if let Some(q) = filter.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        qb.push(" AND (search_key(f.name)");
        push_containing(qb, q);
        qb.push(" OR search_key(f.code)");
        push_containing(qb, q);
        qb.push(")");
    }
    if let Some(id) = filter.council_id {
        qb.push(" AND f.council_id = ").push_bind(id);
    }
    if let Some(id) = filter.region_id {
        qb.push(" AND c.region_id = ").push_bind(id);
    }
    // A blank type, as an empty form field sends it, is no filter (as a blank `q` is).
    if let Some(t) = filter
        .facility_type
        .as_deref()
        .filter(|t| !t.trim().is_empty())
    {
        qb.push(" AND f.type = ").push_bind(type_key(t));
    }
    if let Some(status) = filter.status {
        qb.push(" AND f.status = ").push_bind(status.as_str());
    }
    if let (Some(point), Some(radius)) = (near, filter.radius_m) {
        // A bounding box first, so the latitude index narrows the rows the haversine runs on.
        let (latitudes, longitudes) = bounding_box(point, radius);
        qb.push(" AND f.latitude BETWEEN ")
            .push_bind(latitudes.0)
            .push(" AND ")
            .push_bind(latitudes.1);
        match longitudes {
            Longitudes::All => {}
            Longitudes::Between(west, east) => {
                qb.push(" AND f.longitude BETWEEN ")
                    .push_bind(west)
                    .push(" AND ")
                    .push_bind(east);
            }
            // The circle crosses the antimeridian: east of `west` or west of `east`.
            Longitudes::Wrapped(west, east) => {
                qb.push(" AND (f.longitude >= ")
                    .push_bind(west)
                    .push(" OR f.longitude <= ")
                    .push_bind(east)
                    .push(")");
            }
        }
    }
    qb.push(") AS found");
    if let (Some(_), Some(radius)) = (near, filter.radius_m) {
        qb.push(" WHERE distance_m <= ").push_bind(radius);
    }
}

#[derive(Debug, PartialEq)]
enum Longitudes {
    All,
    Between(f64, f64),
    Wrapped(f64, f64),
}

/// The latitudes and longitudes that hold every point within `radius` metres of `point`, a
/// little generously: the longitudes widen with latitude (exactly, by the angular radius), wrap
/// across the antimeridian, and are all of them when the circle reaches a pole.
fn bounding_box(point: GeoPoint, radius: f64) -> ((f64, f64), Longitudes) {
    let angle = (radius / crate::domain::geo::EARTH_RADIUS_M).min(std::f64::consts::PI);
    let dlat = angle.to_degrees() * 1.0001;
    let (south, north) = (point.latitude - dlat, point.latitude + dlat);
    let latitudes = (south.max(-90.0), north.min(90.0));
    let reach = angle.sin() / point.latitude.to_radians().cos();
    if south <= -90.0 || north >= 90.0 || reach.is_nan() || reach >= 1.0 {
        return (latitudes, Longitudes::All);
    }
    let dlng = reach.asin().to_degrees() * 1.0001;
    let (west, east) = (point.longitude - dlng, point.longitude + dlng);
    let longitudes = if west < -180.0 {
        Longitudes::Wrapped(west + 360.0, east)
    } else if east > 180.0 {
        Longitudes::Wrapped(west, east - 360.0)
    } else {
        Longitudes::Between(west, east)
    };
    (latitudes, longitudes)
}

/// A facility type as stored and filtered: "Health Center", "health-center", "health_center"
/// and "Health\u{A0} Center" (spaces pasted from a web page) are one type, whether typed into a
/// form or a spreadsheet: characters that show nothing are dropped, and each run of spaces,
/// hyphens and underscores is one underscore. (One made of those alone is kept as typed.)
pub fn type_key(t: &str) -> String {
    let shown: String = t
        .chars()
        .filter(|&c| c.is_whitespace() || !crate::domain::shows_nothing(c))
        .collect();
    let words: Vec<&str> = shown
        .split(|c: char| c.is_whitespace() || c == '_' || c == '-')
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        t.trim().to_lowercase()
    } else {
        words.join("_").to_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_is_keyed_the_same_however_its_spaces_and_hyphens_are_typed() {
        for typed in [
            "Health Center",
            " health-center ",
            "health_center",
            "Health  Center",
            "Health\u{A0}Center",
            "Health \u{2013}\u{200B} Center"
                .replace('\u{2013}', "-")
                .as_str(),
            "health__center",
            "Health - Center",
        ] {
            assert_eq!(type_key(typed), "health_center", "{typed:?}");
        }
        assert_eq!(type_key("Hôpital"), "hôpital");
        assert_eq!(type_key(" - "), "-");
    }

    fn inside(((south, north), longitudes): &((f64, f64), Longitudes), p: GeoPoint) -> bool {
        let lat_ok = (*south..=*north).contains(&p.latitude);
        lat_ok
            && match longitudes {
                Longitudes::All => true,
                Longitudes::Between(w, e) => (*w..=*e).contains(&p.longitude),
                Longitudes::Wrapped(w, e) => p.longitude >= *w || p.longitude <= *e,
            }
    }

    #[test]
    fn the_box_holds_every_point_of_the_circle_across_the_antimeridian_and_near_the_poles() {
        for (lat, lng, radius) in [
            (-17.0, 179.99, 5_000.0),
            (-17.0, -179.99, 5_000.0),
            (89.999, 0.0, 1_000.0),
            (-89.99, 45.0, 5_000.0),
            (60.0, 0.0, 500_000.0),
            (-1.95, 30.06, 5_000.0),
            (0.0, 0.0, 15_000_000.0),
        ] {
            let centre = GeoPoint::new(lat, lng).unwrap();
            let bbox = bounding_box(centre, radius);
            // Points on the circle (just inside it), found by walking out along 360 bearings.
            for step in 0..360 {
                let bearing = f64::from(step).to_radians();
                let d = radius * 0.999 / crate::domain::geo::EARTH_RADIUS_M;
                let (phi, lambda) = (lat.to_radians(), lng.to_radians());
                let phi2 = (phi.sin() * d.cos() + phi.cos() * d.sin() * bearing.cos()).asin();
                let lambda2 = lambda
                    + (bearing.sin() * d.sin() * phi.cos()).atan2(d.cos() - phi.sin() * phi2.sin());
                let lng2 = (lambda2.to_degrees() + 540.0).rem_euclid(360.0) - 180.0;
                let p = GeoPoint::new(phi2.to_degrees(), lng2).unwrap();
                assert!(centre.distance_m(&p) <= radius, "{p:?}");
                assert!(
                    inside(&bbox, p),
                    "({lat}, {lng}) r={radius}: {p:?} outside {bbox:?}"
                );
            }
        }
        // The box still narrows an ordinary search.
        let bbox = bounding_box(GeoPoint::new(-1.95, 30.06).unwrap(), 5_000.0);
        assert!(matches!(bbox.1, Longitudes::Between(w, e) if e - w < 0.1));
        assert!(!inside(&bbox, GeoPoint::new(-1.95, 30.2).unwrap()));
    }
}
