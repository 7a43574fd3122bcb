-- A facility's status change is stamped only when it opens or closes: moving a closed facility
-- from maintenance to inactive (or back) leaves it closed since the first closure, so a shift a
-- phone kept offline from between the two is still refused when it syncs.
DROP TRIGGER facilities_status_changed ON facilities;
CREATE TRIGGER facilities_status_changed BEFORE UPDATE OF status ON facilities
    FOR EACH ROW WHEN ((NEW.status = 'active') IS DISTINCT FROM (OLD.status = 'active'))
    EXECUTE FUNCTION note_status_change();
