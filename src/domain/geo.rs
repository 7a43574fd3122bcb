//! Great-circle distance and coordinates.

/// Mean Earth radius (IUGG), in metres. The SQL in `db::facilities` uses the same value.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// A WGS84 point, checked once at the edge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoPoint {
    pub latitude: f64,
    pub longitude: f64,
}

impl GeoPoint {
    pub fn new(latitude: f64, longitude: f64) -> Result<Self, (&'static str, String)> {
        if !latitude.is_finite() || !(-90.0..=90.0).contains(&latitude) {
            return Err(("latitude", "must be between -90 and 90".into()));
        }
        if !longitude.is_finite() || !(-180.0..=180.0).contains(&longitude) {
            return Err(("longitude", "must be between -180 and 180".into()));
        }
        Ok(Self {
            latitude,
            longitude,
        })
    }

    /// Haversine distance in metres.
    pub fn distance_m(&self, other: &GeoPoint) -> f64 {
        let (lat1, lat2) = (self.latitude.to_radians(), other.latitude.to_radians());
        let dlat = lat2 - lat1;
        let dlng = (other.longitude - self.longitude).to_radians();
        let a = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlng / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
    }

    /// `"LAT,LNG"`, as in `?near=-1.95,30.06`.
    pub fn parse_pair(s: &str) -> Result<Self, String> {
        let (lat, lng) = s
            .split_once(',')
            .ok_or_else(|| "expected LAT,LNG".to_string())?;
        let lat: f64 = lat
            .trim()
            .parse()
            .map_err(|_| "latitude is not a number".to_string())?;
        let lng: f64 = lng
            .trim()
            .parse()
            .map_err(|_| "longitude is not a number".to_string())?;
        Self::new(lat, lng).map_err(|(_, reason)| reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_degree_of_latitude_is_about_111_km() {
        let a = GeoPoint::new(0.0, 30.0).unwrap();
        let b = GeoPoint::new(1.0, 30.0).unwrap();
        assert!(
            (a.distance_m(&b) - 111_195.0).abs() < 1.0,
            "{}",
            a.distance_m(&b)
        );
    }

    #[test]
    fn kigali_to_huye_is_about_90_km() {
        let kigali = GeoPoint::new(-1.9441, 30.0619).unwrap();
        let huye = GeoPoint::new(-2.5967, 29.7394).unwrap();
        let d = kigali.distance_m(&huye);
        assert!((80_000.0..=85_000.0).contains(&d), "{d}");
    }

    #[test]
    fn coordinates_out_of_range_are_refused() {
        assert!(GeoPoint::new(90.1, 0.0).is_err());
        assert!(GeoPoint::new(0.0, -180.5).is_err());
        assert!(GeoPoint::new(f64::NAN, 0.0).is_err());
        assert!(GeoPoint::parse_pair("-1.95, 30.06").is_ok());
        assert!(GeoPoint::parse_pair("-1.95").is_err());
    }
}
