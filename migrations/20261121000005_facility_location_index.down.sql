DROP INDEX IF EXISTS facilities_location_idx;
