ALTER TABLE sync_snapshots ADD COLUMN widened boolean NOT NULL DEFAULT false;
