-- A login's chain of refresh tokens (a family) whose rotated token came back: someone besides
-- its holder has a copy. Every access token of the user is then ended, once per chain: the row
-- makes it once, however the family ended (revoked by the reuse, or by a logout with its current
-- token, which a thief holding it may send). `ended_at` is set when the tokens were ended, in
-- the same statement: until then, the next reuse tries again (the request that found it may
-- have failed or been cancelled after its commit).
CREATE TABLE refresh_families_reused (
    family_id   uuid PRIMARY KEY,
    detected_at timestamptz NOT NULL DEFAULT now(),
    ended_at    timestamptz
);
