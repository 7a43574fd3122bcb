-- A timestamp that ended a page goes back to naming a snapshot its device has wholly seen: its
-- base, or, on a first sync, one that sees nothing (the device pulls everything again).
UPDATE sync_snapshots
SET snapshot = coalesce((resume ->> 'b')::pg_snapshot, '1:1:'::pg_snapshot)
WHERE resume IS NOT NULL;
DROP INDEX IF EXISTS sync_snapshots_viewer_idx;
ALTER TABLE sync_snapshots DROP COLUMN viewer_id, DROP COLUMN resume;
