-- Region -> council (district) -> facility. Geography is reference data: deleting a region or
-- council that still has children is refused (RESTRICT) rather than cascading into facilities.

CREATE TABLE regions (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code       text NOT NULL,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX regions_code_key ON regions (lower(code));
CREATE UNIQUE INDEX regions_name_key ON regions (lower(name));
CREATE TRIGGER regions_updated_at BEFORE UPDATE ON regions
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE councils (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    region_id  uuid NOT NULL REFERENCES regions (id) ON DELETE RESTRICT,
    code       text NOT NULL,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Imports resolve councils by name or code, case-insensitively.
CREATE UNIQUE INDEX councils_code_key ON councils (lower(code));
CREATE UNIQUE INDEX councils_name_key ON councils (lower(name));
CREATE INDEX councils_region_id_idx ON councils (region_id);
CREATE TRIGGER councils_updated_at BEFORE UPDATE ON councils
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE facilities (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code              text NOT NULL CHECK (length(btrim(code)) BETWEEN 1 AND 64),
    name              text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    type              text NOT NULL DEFAULT 'health_center',
    council_id        uuid NOT NULL REFERENCES councils (id) ON DELETE RESTRICT,
    latitude          double precision NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude         double precision NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    geofence_radius_m integer NOT NULL DEFAULT 200 CHECK (geofence_radius_m BETWEEN 1 AND 100000),
    address           text,
    contact_phone     text,
    contact_email     text,
    status            text NOT NULL DEFAULT 'active'
                      CHECK (status IN ('active', 'inactive', 'maintenance')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- Sync bookkeeping (see stamp_change): which transaction created and last changed the row.
    created_xid       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    change_xid        xid8 NOT NULL DEFAULT pg_current_xact_id()
);
-- Codes are compared case-insensitively: "HC-001" and "hc-001" are the same facility.
CREATE UNIQUE INDEX facilities_code_key ON facilities (lower(code));
CREATE INDEX facilities_council_id_idx ON facilities (council_id);
CREATE INDEX facilities_type_idx ON facilities (type);
CREATE INDEX facilities_status_idx ON facilities (status);
CREATE INDEX facilities_name_idx ON facilities (lower(name) text_pattern_ops);
CREATE INDEX facilities_change_xid_idx ON facilities (change_xid);
CREATE TRIGGER facilities_stamp BEFORE UPDATE ON facilities
    FOR EACH ROW EXECUTE FUNCTION stamp_change();
