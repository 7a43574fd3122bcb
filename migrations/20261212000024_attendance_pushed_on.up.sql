-- What the latest push that changed a record built on, as one number: a hash of the device that
-- sent it, the version it was based on, and the version it made. A device whose answer was lost
-- changes the record again before it learns the version its push made, and sends that change on
-- the version it still holds: when the record stands as that device's own push left it, the
-- change is the next one, not a stale edit for the strategy to settle (which would drop it).
ALTER TABLE attendance ADD COLUMN pushed_on bigint;
