DROP TABLE IF EXISTS facility_imports;
DROP TABLE IF EXISTS sync_snapshots;
DROP TABLE IF EXISTS sync_conflicts;
DROP TABLE IF EXISTS attendance;
