-- A user's `updated_at` tells when their account last changed, not when someone last tried its
-- password: the login bookkeeping (failed attempts, the lock, the last login, a hash made again
-- with newer parameters) leaves it alone. Any other column, including one added later, still
-- counts; a new password moves `token_version` too.
DROP TRIGGER users_updated_at ON users;
CREATE TRIGGER users_updated_at BEFORE UPDATE ON users
    FOR EACH ROW
    WHEN (to_jsonb(OLD) - '{failed_login_count,locked_until,last_login_at,password_hash,updated_at}'::text[]
          IS DISTINCT FROM
          to_jsonb(NEW) - '{failed_login_count,locked_until,last_login_at,password_hash,updated_at}'::text[])
    EXECUTE FUNCTION set_updated_at();
