-- A push asking for manual conflicts counts the user's conflicts still waiting for an admin (at
-- most 200 wait at once): found by the user, among the pending ones only.
CREATE INDEX sync_conflicts_pending_user_idx ON sync_conflicts (user_id) WHERE status = 'pending';
