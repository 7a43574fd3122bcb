//! The pure rule that settles each pushed record against the server's copy.

use crate::sync::model::{Content, Op, Strategy};

/// The server's copy of a record, as far as the rule needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerCopy {
    pub version: i32,
    pub content: Content,
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A new record.
    Create,
    /// A change based on the server's current version (or newer): applied, version bumped.
    Update,
    /// A deletion based on the server's current version: applied as a tombstone.
    Delete,
    /// A deletion of a record the server never had: nothing to do.
    DeleteUnknown,
    /// The server already has exactly this: nothing changes.
    Duplicate,
    /// Based on an older version, with different content: settled by the strategy.
    Conflict(Strategy),
}

/// `incoming` is the pushed content (None for a delete); `version` the version it is based on.
pub fn decide(
    op: Op,
    version: i32,
    incoming: Option<&Content>,
    server: Option<&ServerCopy>,
    strategy: Strategy,
) -> Decision {
    let Some(server) = server else {
        return match op {
            Op::Upsert => Decision::Create,
            Op::Delete => Decision::DeleteUnknown,
        };
    };
    let current = version >= server.version;
    match op {
        Op::Upsert => {
            if !server.deleted && incoming == Some(&server.content) {
                Decision::Duplicate
            } else if current && !server.deleted {
                // A deleted record is not brought back by an edit on its tombstone's version (a
                // device told of that version by a conflict answer, before it pulled the
                // deletion): only as a conflict its strategy settles.
                Decision::Update
            } else {
                Decision::Conflict(strategy)
            }
        }
        Op::Delete => {
            if server.deleted {
                Decision::Duplicate
            } else if current {
                Decision::Delete
            } else {
                Decision::Conflict(strategy)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::attendance::Location;
    use chrono::{TimeZone, Utc};

    fn content(notes: &str) -> Content {
        Content {
            facility_id: uuid::Uuid::nil(),
            clock_in_at: Utc.with_ymd_and_hms(2026, 11, 1, 6, 0, 0).unwrap(),
            clock_out_at: None,
            clock_in: Location {
                latitude: -1.9,
                longitude: 30.1,
                accuracy_m: None,
            },
            clock_out: None,
            notes: Some(notes.into()),
        }
    }

    fn server(version: i32, notes: &str, deleted: bool) -> ServerCopy {
        ServerCopy {
            version,
            content: content(notes),
            deleted,
        }
    }

    #[test]
    fn new_records_are_created_and_unknown_deletes_are_no_ops() {
        let c = content("a");
        assert_eq!(
            decide(Op::Upsert, 1, Some(&c), None, Strategy::ServerWins),
            Decision::Create
        );
        assert_eq!(
            decide(Op::Delete, 1, None, None, Strategy::ServerWins),
            Decision::DeleteUnknown
        );
    }

    #[test]
    fn the_same_content_is_a_duplicate_whatever_the_version() {
        let c = content("a");
        for v in [1, 2, 3] {
            assert_eq!(
                decide(
                    Op::Upsert,
                    v,
                    Some(&c),
                    Some(&server(2, "a", false)),
                    Strategy::ClientWins
                ),
                Decision::Duplicate
            );
        }
        assert_eq!(
            decide(
                Op::Delete,
                1,
                None,
                Some(&server(2, "a", true)),
                Strategy::ServerWins
            ),
            Decision::Duplicate
        );
    }

    #[test]
    fn a_change_on_the_current_version_applies() {
        let c = content("b");
        assert_eq!(
            decide(
                Op::Upsert,
                2,
                Some(&c),
                Some(&server(2, "a", false)),
                Strategy::ServerWins
            ),
            Decision::Update
        );
        assert_eq!(
            decide(
                Op::Delete,
                2,
                None,
                Some(&server(2, "a", false)),
                Strategy::ServerWins
            ),
            Decision::Delete
        );
    }

    #[test]
    fn a_change_on_an_older_version_is_a_conflict_settled_by_its_strategy() {
        let c = content("b");
        for s in [Strategy::ServerWins, Strategy::ClientWins, Strategy::Manual] {
            assert_eq!(
                decide(Op::Upsert, 1, Some(&c), Some(&server(2, "a", false)), s),
                Decision::Conflict(s)
            );
            assert_eq!(
                decide(Op::Delete, 1, None, Some(&server(2, "a", false)), s),
                Decision::Conflict(s)
            );
        }
        // An edit of a record deleted since is a conflict too, even on the deletion's version.
        for v in [1, 2] {
            assert_eq!(
                decide(
                    Op::Upsert,
                    v,
                    Some(&c),
                    Some(&server(2, "b", true)),
                    Strategy::Manual
                ),
                Decision::Conflict(Strategy::Manual)
            );
        }
    }
}
