-- Fails while two records of one device share a client timestamp, as the older rule forbids.
DROP INDEX attendance_device_timestamp_key;
CREATE UNIQUE INDEX attendance_device_timestamp_key ON attendance (device_id, client_timestamp, user_id)
    WHERE device_id IS NOT NULL AND client_timestamp IS NOT NULL;
