-- Whose records a supervisor may see follows the supervision tree. When a user, with the team
-- below them, moves to another supervisor, those above the new place gain the user's records
-- and those above the old place lose them: records that did not change. A pull tells each
-- device of both once, by this log (the gained records as created, the lost ones as deleted).
CREATE TABLE scope_changes (
    viewer_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    granted    boolean NOT NULL,
    xid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX scope_changes_viewer_user_idx ON scope_changes (viewer_id, user_id);

-- The gained records are written again unchanged, so that they fall in the pulls' window; such a
-- write is not an update of the record, and keeps its updated_at.
CREATE OR REPLACE FUNCTION stamp_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW IS DISTINCT FROM OLD THEN
        NEW.updated_at := now();
    END IF;
    NEW.change_xid := pg_current_xact_id();
    RETURN NEW;
END;
$$;
