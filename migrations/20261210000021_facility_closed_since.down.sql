DROP TRIGGER facilities_status_changed ON facilities;
CREATE TRIGGER facilities_status_changed BEFORE UPDATE OF status ON facilities
    FOR EACH ROW EXECUTE FUNCTION note_status_change();
