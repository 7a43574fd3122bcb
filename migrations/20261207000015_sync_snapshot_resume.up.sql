-- A WatermelonDB pull answers at most one page of changes. A timestamp that ends a page with
-- more to come keeps where its pull stopped (`resume`, the pull's cursor) and whose pull it is
-- (`viewer_id`): the next pull from it goes on from there. Its `snapshot` is what the device
-- has wholly seen (the base, or, on a first sync, the snapshot the pages are read at).
ALTER TABLE sync_snapshots
    ADD COLUMN resume jsonb,
    ADD COLUMN viewer_id uuid REFERENCES users (id) ON DELETE CASCADE;
CREATE INDEX sync_snapshots_viewer_idx ON sync_snapshots (viewer_id) WHERE viewer_id IS NOT NULL;
