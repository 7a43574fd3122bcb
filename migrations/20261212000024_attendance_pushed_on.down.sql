ALTER TABLE attendance DROP COLUMN IF EXISTS pushed_on;
