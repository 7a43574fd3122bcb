DROP INDEX attendance_device_timestamp_key;
CREATE UNIQUE INDEX attendance_device_timestamp_key ON attendance (user_id, device_id, client_timestamp)
    WHERE device_id IS NOT NULL AND client_timestamp IS NOT NULL;
