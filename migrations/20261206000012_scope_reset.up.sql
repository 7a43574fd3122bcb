-- An admin may see every record, anyone else only their own and their team's. A role change into
-- or out of admin moves a user's whole scope at once, which their devices' pulls learn from this
-- stamp: the transaction of the last such change. A pull from before it sends what the device
-- lacks (into admin) or tells it what it may no longer keep (out of admin).
ALTER TABLE users ADD COLUMN scope_reset_xid xid8;
