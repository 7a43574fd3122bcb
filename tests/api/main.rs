//! Integration tests: the real service over HTTP, on a real Postgres (and PgBouncer where said).

mod attendance;
mod auth;
mod facilities;
mod foundation;
#[allow(dead_code)] // shared by every resource's tests; not each uses all of it
mod helpers;
mod migrations;
mod openapi;
mod pgbouncer;
mod sync;
mod users;
mod watermelon;
