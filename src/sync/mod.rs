//! Offline sync: batched pushes with conflict strategies, and pulls by MVCC snapshot.

pub mod apply;
pub mod decide;
pub mod model;
pub mod pull;
pub mod push;
pub mod watermelon;
