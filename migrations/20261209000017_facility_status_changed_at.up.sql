-- When a facility's status last changed. A shift a phone kept offline and syncs later is
-- refused when it began after its facility was closed (inactive, or under maintenance), as a
-- clock-in there online would be; one begun before is kept. A closed facility's last change of
-- any kind is the best this table knows of when it closed, and is taken for it (without
-- stamping the row as changed: no device needs to pull it again).
ALTER TABLE facilities ADD COLUMN status_changed_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE facilities DISABLE TRIGGER facilities_stamp;
UPDATE facilities SET status_changed_at = updated_at WHERE status <> 'active';
ALTER TABLE facilities ENABLE TRIGGER facilities_stamp;

CREATE FUNCTION note_status_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        NEW.status_changed_at := now();
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER facilities_status_changed BEFORE UPDATE OF status ON facilities
    FOR EACH ROW EXECUTE FUNCTION note_status_change();
