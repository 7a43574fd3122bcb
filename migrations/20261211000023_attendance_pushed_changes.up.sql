-- The latest changes pushes applied to a record (at most 16), each as a number: a hash of the
-- device that sent it and of what it sent (its operation, content and client timestamp). A
-- batch sent again after its answer was lost, once the record has moved on (clocked out online,
-- say), is then known for the same change and answered `duplicate`, rather than taken for a
-- stale edit and settled by its strategy.
ALTER TABLE attendance ADD COLUMN pushed bigint[];
