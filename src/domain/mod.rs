//! Domain types built once at the edge, and the pure rules that act on them.

pub mod attendance;
pub mod geo;
pub mod identity;

pub use geo::GeoPoint;
pub use identity::{Email, Password, Role, UserStatus};
