-- Users and their credentials. Roles and statuses are text with CHECK constraints rather than
-- Postgres enums: adding a value to an enum cannot be undone by a down migration.

CREATE TABLE users (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email               text NOT NULL CHECK (email = lower(email) AND position('@' IN email) > 1),
    password_hash       text NOT NULL,
    first_name          text NOT NULL CHECK (length(btrim(first_name)) BETWEEN 1 AND 100),
    last_name           text NOT NULL CHECK (length(btrim(last_name)) BETWEEN 1 AND 100),
    phone               text,
    employee_id         text,
    role                text NOT NULL DEFAULT 'data_clerk'
                        CHECK (role IN ('tester', 'data_clerk', 'focal', 'ddo',
                                        'supervisor', 'backstopper', 'admin')),
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'active', 'inactive', 'suspended')),
    -- A facility can be closed without orphaning its staff's accounts.
    facility_id         uuid REFERENCES facilities (id) ON DELETE SET NULL,
    -- Losing a supervisor leaves the team unassigned rather than deleting it.
    supervisor_id       uuid REFERENCES users (id) ON DELETE SET NULL
                        CHECK (supervisor_id IS DISTINCT FROM id),
    failed_login_count  integer NOT NULL DEFAULT 0,
    locked_until        timestamptz,
    last_login_at       timestamptz,
    -- Carried in access tokens; bumped on deactivation, role or password change so that every
    -- token issued before stops working (a version, unlike a timestamp, has no same-second gap).
    token_version       integer NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (email);
CREATE UNIQUE INDEX users_employee_id_key ON users (lower(employee_id)) WHERE employee_id IS NOT NULL;
CREATE INDEX users_role_idx ON users (role);
CREATE INDEX users_status_idx ON users (status);
CREATE INDEX users_facility_id_idx ON users (facility_id);
CREATE INDEX users_supervisor_id_idx ON users (supervisor_id);
CREATE INDEX users_created_at_idx ON users (created_at, id);
-- Free-text search over names, email, phone and employee id (`q`), case-insensitive substring.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX users_search_idx ON users USING gin (
    (lower(first_name || ' ' || last_name || ' ' || email || ' ' || coalesce(phone, '') || ' '
           || coalesce(employee_id, ''))) gin_trgm_ops);
CREATE TRIGGER users_updated_at BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Opaque refresh tokens, stored as SHA-256 hashes. Tokens issued by rotation share a family:
-- presenting an already rotated token revokes the whole family (reuse detection).
CREATE TABLE refresh_tokens (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id   uuid NOT NULL,
    token_hash  bytea NOT NULL,
    expires_at  timestamptz NOT NULL,
    rotated_at  timestamptz,
    revoked_at  timestamptz,
    ip          text,
    user_agent  text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX refresh_tokens_token_hash_key ON refresh_tokens (token_hash);
CREATE INDEX refresh_tokens_family_id_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_id_idx ON refresh_tokens (user_id);

-- The audit trail. Actors and entities are kept as plain ids so that history survives the
-- deletion of what it describes; the actor's email is copied for readability.
CREATE TABLE activities (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    actor_id    uuid REFERENCES users (id) ON DELETE SET NULL,
    actor_email text,
    action      text NOT NULL,
    entity_type text,
    entity_id   uuid,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb,
    ip          text,
    user_agent  text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX activities_created_at_idx ON activities (created_at DESC, id);
CREATE INDEX activities_actor_id_idx ON activities (actor_id, created_at DESC);
CREATE INDEX activities_action_idx ON activities (action, created_at DESC);
CREATE INDEX activities_entity_idx ON activities (entity_type, entity_id);
