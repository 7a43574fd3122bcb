-- The database's sync epoch: moved on when the service restamps change marks after a logical
-- restore into another cluster. A `/sync/pull` cursor carries the epoch it was issued in, and one
-- from another epoch is refused: its transaction ids name another cluster's history, which the
-- new counter will one day pass, when the cursor could no longer be told from a new one.
CREATE TABLE sync_epoch (
    one   boolean PRIMARY KEY DEFAULT true CHECK (one),
    epoch bigint NOT NULL DEFAULT 0
);
INSERT INTO sync_epoch DEFAULT VALUES;
