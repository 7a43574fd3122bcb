-- Searches (`q` on users and facilities) match letters whatever their accents, as people type
-- names on a phone keyboard: `theogene` finds Théogène, `celestin` Célestin, `sante` Santé.
CREATE EXTENSION IF NOT EXISTS unaccent;
-- unaccent() is only STABLE (its dictionary is looked up by name), and an index needs an
-- IMMUTABLE expression: this names the dictionary and the function by schema, so no
-- search_path changes what it does. Lowered after the accents are gone.
CREATE FUNCTION search_key(text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    RETURN lower(public.unaccent('public.unaccent'::regdictionary, $1));

DROP INDEX users_search_idx;
CREATE INDEX users_search_idx ON users USING gin (
    search_key(first_name || ' ' || last_name || ' ' || email || ' ' || coalesce(phone, '') || ' '
               || coalesce(employee_id, '')) gin_trgm_ops);
