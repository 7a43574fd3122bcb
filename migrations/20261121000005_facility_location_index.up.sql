-- `near=` with `radius_m` narrows by a bounding box before computing great-circle distances.
CREATE INDEX facilities_location_idx ON facilities (latitude, longitude);
