CREATE OR REPLACE FUNCTION stamp_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    NEW.change_xid := pg_current_xact_id();
    RETURN NEW;
END;
$$;
DROP TABLE scope_changes;
