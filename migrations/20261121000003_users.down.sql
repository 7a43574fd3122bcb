DROP TABLE IF EXISTS activities;
DROP TABLE IF EXISTS refresh_tokens;
DROP TABLE IF EXISTS users;
-- pg_trgm is left installed: other objects in the database may use it.
