-- Every WatermelonDB pull now sends its records as updates, so whether a timestamp's snapshot
-- stands for a thinned range no longer changes what a pull sends: nothing reads the mark.
ALTER TABLE sync_snapshots DROP COLUMN widened;
