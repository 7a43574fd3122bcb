-- A user's open shift is found through attendance_one_open_per_user alone. The two indexes
-- dropped here also matched `status = 'open'`, and with statistics taken before a morning's
-- clock-ins (no open rows yet) the planner preferred them and read every open shift to find
-- one user's. The forgotten clock-out sweep reads the same unique index; a status index on
-- three values served no query. Each insert now also maintains two indexes fewer.
DROP INDEX attendance_status_idx;
DROP INDEX attendance_open_idx;
