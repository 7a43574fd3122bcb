-- Old WatermelonDB timestamps are thinned by age (see `sync::watermelon::thin_snapshots`).
CREATE INDEX sync_snapshots_created_at_idx ON sync_snapshots (created_at);
