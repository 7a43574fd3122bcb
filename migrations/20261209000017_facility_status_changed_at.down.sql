DROP TRIGGER facilities_status_changed ON facilities;
DROP FUNCTION note_status_change();
ALTER TABLE facilities DROP COLUMN status_changed_at;
