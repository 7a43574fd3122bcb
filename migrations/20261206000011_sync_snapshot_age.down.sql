DROP INDEX IF EXISTS sync_snapshots_created_at_idx;
