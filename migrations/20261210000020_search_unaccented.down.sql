DROP INDEX users_search_idx;
CREATE INDEX users_search_idx ON users USING gin (
    (lower(first_name || ' ' || last_name || ' ' || email || ' ' || coalesce(phone, '') || ' '
           || coalesce(employee_id, ''))) gin_trgm_ops);
DROP FUNCTION search_key(text);
-- unaccent is left installed: other objects in the database may use it.
