-- Searches (`q` on users and facilities) match letters whatever their accents, as people type
-- names on a phone keyboard: `theogene` finds Théogène, `celestin` Célestin, `sante` Santé.
CREATE EXTENSION IF NOT EXISTS unaccent;
-- unaccent() is only STABLE (its dictionary is looked up by name), and an index needs an
-- IMMUTABLE expression: this names the dictionary and the function by the schema the extension
-- is in (installed beforehand elsewhere than `public`, say), so no search_path changes what it
-- does. Lowered after the accents are gone.
DO $$
DECLARE
    schema text := (SELECT n.nspname FROM pg_extension e
                    JOIN pg_namespace n ON n.oid = e.extnamespace
                    WHERE e.extname = 'unaccent');
BEGIN
    EXECUTE format(
        'CREATE FUNCTION search_key(text) RETURNS text
             LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
             RETURN lower(%I.unaccent(%L::regdictionary, $1))',
        schema, quote_ident(schema) || '.unaccent');
END
$$;

DROP INDEX users_search_idx;
CREATE INDEX users_search_idx ON users USING gin (
    search_key(first_name || ' ' || last_name || ' ' || email || ' ' || coalesce(phone, '') || ' '
               || coalesce(employee_id, '')) gin_trgm_ops);
