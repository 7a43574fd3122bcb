-- Old WatermelonDB timestamps are thinned by age (see `sync::watermelon::thin_snapshots`); a
-- snapshot kept for a thinned range is marked, since it is earlier than the pulls it stands for.
CREATE INDEX sync_snapshots_created_at_idx ON sync_snapshots (created_at);
ALTER TABLE sync_snapshots ADD COLUMN widened boolean NOT NULL DEFAULT false;
