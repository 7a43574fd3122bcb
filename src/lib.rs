//! Field attendance API: clock-in/out with GPS for health-facility field workers, offline batch
//! sync, facility imports and supervision reports, on Axum and Postgres.

pub mod audit;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod extract;
pub mod import;
pub mod jobs;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod routes;
pub mod seed;
pub mod startup;
pub mod state;
pub mod sync;
pub mod telemetry;
