DROP TRIGGER users_count_update ON users;
DROP TRIGGER users_count_delete ON users;
DROP TRIGGER users_count_insert ON users;
DROP FUNCTION count_user_change();
DROP FUNCTION count_users();
DROP TABLE user_counts;
