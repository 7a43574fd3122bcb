ALTER TABLE sync_snapshots DROP COLUMN IF EXISTS widened;
DROP INDEX IF EXISTS sync_snapshots_created_at_idx;
