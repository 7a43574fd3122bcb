//! Facility imports: read a CSV or spreadsheet, check every row, apply the valid ones.

pub mod apply;
pub mod read;
pub mod rows;
