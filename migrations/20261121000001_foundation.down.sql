DROP FUNCTION IF EXISTS stamp_change();
DROP FUNCTION IF EXISTS set_updated_at();
