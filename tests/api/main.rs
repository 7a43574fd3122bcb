//! Integration tests: the real service over HTTP, on a real Postgres (and PgBouncer where said).

// Tests open transactions of their own (to hold a row or a lock while a request runs) and wait
// for each `BEGIN`; the service opens its own through `db::begin`.
#![allow(clippy::disallowed_methods)]

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
