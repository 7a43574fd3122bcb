DELETE FROM sync_snapshots WHERE resume IS NOT NULL;
ALTER TABLE sync_snapshots DROP COLUMN viewer_id, DROP COLUMN resume;
