CREATE INDEX attendance_status_idx ON attendance (status);
CREATE INDEX attendance_open_idx ON attendance (clock_in_at) WHERE status = 'open';
