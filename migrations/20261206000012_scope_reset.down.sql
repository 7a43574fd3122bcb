ALTER TABLE users DROP COLUMN IF EXISTS scope_reset_xid;
