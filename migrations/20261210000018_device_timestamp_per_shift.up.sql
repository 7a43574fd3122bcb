-- The same device's change sent again under another id is told by its client timestamp, and by
-- the shift it describes: one tap may stamp two records alike (the clock-out of one shift and
-- the clock-in of the next, a phone switching facilities), and both are kept. The lookup that
-- reads a push's timestamps is served as before, by the leading columns.
DROP INDEX attendance_device_timestamp_key;
CREATE UNIQUE INDEX attendance_device_timestamp_key
    ON attendance (device_id, client_timestamp, user_id, clock_in_at)
    WHERE device_id IS NOT NULL AND client_timestamp IS NOT NULL;
