-- Shared building blocks for every table.

-- Keeps updated_at honest without relying on every query to remember it.
CREATE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

-- Rows that devices pull carry the id of the transaction that last wrote them (change_xid).
-- A pull cursor is a whole MVCC snapshot, so a pull returns exactly the rows committed after
-- the previous snapshot, even when transactions commit in another order than they started:
-- a sequence number or a timestamp taken at insert time would skip a slow transaction's rows.
CREATE FUNCTION stamp_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    NEW.change_xid := pg_current_xact_id();
    RETURN NEW;
END;
$$;
