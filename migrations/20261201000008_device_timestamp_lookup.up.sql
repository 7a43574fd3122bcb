-- A push looks for its records' device timestamps (the same change sent again under a new id)
-- with `device_id = $1 AND client_timestamp = ANY($2)`. With the user first in this index that
-- lookup also named the user, and the planner, whose statistics promise about one record per
-- user, read the user's whole history through attendance_user_clock_in_idx instead: 14 ms for a
-- user with 12,000 records against 0.35 ms here. With the device first, this index is the only
-- one that serves the lookup, whatever the statistics say. The unique rule is the same three
-- columns; rows of another user on a shared device are told apart by the caller.
DROP INDEX attendance_device_timestamp_key;
CREATE UNIQUE INDEX attendance_device_timestamp_key ON attendance (device_id, client_timestamp, user_id)
    WHERE device_id IS NOT NULL AND client_timestamp IS NOT NULL;
