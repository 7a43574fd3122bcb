-- Exact user totals by role and status, kept by statement-level triggers, so that the admin's
-- user list answers its `total` without counting 100,000 rows on every page. Rows are updated
-- in (role, status) order, so concurrent writers cannot deadlock on them.
CREATE TABLE user_counts (
    role   text   NOT NULL,
    status text   NOT NULL,
    n      bigint NOT NULL,
    PRIMARY KEY (role, status)
);

INSERT INTO user_counts (role, status, n)
SELECT role, status, count(*) FROM users GROUP BY role, status;

-- Inserts and deletes, in bulk (seeds, imports) as one by one.
CREATE FUNCTION count_users() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO user_counts AS c (role, status, n)
        SELECT role, status, count(*) FROM new_rows GROUP BY role, status ORDER BY role, status
        ON CONFLICT (role, status) DO UPDATE SET n = c.n + EXCLUDED.n;
    ELSE
        UPDATE user_counts c SET n = c.n - d.n
        FROM (SELECT role, status, count(*) AS n FROM old_rows GROUP BY role, status) d
        WHERE c.role = d.role AND c.status = d.status;
    END IF;
    RETURN NULL;
END;
$$;

-- A change of role or status moves one user between two counts (row-level: transition tables
-- cannot be limited to these columns, and every login updates users).
CREATE FUNCTION count_user_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.role, OLD.status) < (NEW.role, NEW.status) THEN
        UPDATE user_counts SET n = n - 1 WHERE role = OLD.role AND status = OLD.status;
    END IF;
    INSERT INTO user_counts AS c (role, status, n) VALUES (NEW.role, NEW.status, 1)
    ON CONFLICT (role, status) DO UPDATE SET n = c.n + 1;
    IF (OLD.role, OLD.status) > (NEW.role, NEW.status) THEN
        UPDATE user_counts SET n = n - 1 WHERE role = OLD.role AND status = OLD.status;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_count_insert AFTER INSERT ON users
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_users();
CREATE TRIGGER users_count_delete AFTER DELETE ON users
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_users();
CREATE TRIGGER users_count_update AFTER UPDATE OF role, status ON users
    FOR EACH ROW WHEN (OLD.role IS DISTINCT FROM NEW.role OR OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION count_user_change();
