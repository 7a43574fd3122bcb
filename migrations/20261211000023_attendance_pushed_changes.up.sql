-- The last change a push applied to a record from each device: `{device_id: client_timestamp}`,
-- the timestamp in microseconds since 1970. A batch sent again after its answer was lost, once
-- the record has moved on (clocked out online, say), is then known for the same change and
-- answered `duplicate`, rather than taken for a stale edit and settled by its strategy. A
-- record's creation is known by its own `device_id` and `client_timestamp`.
ALTER TABLE attendance ADD COLUMN pushed jsonb;
