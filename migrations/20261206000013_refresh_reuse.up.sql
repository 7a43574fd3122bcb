-- A login's chain of refresh tokens (a family) whose rotated token came back: someone besides
-- its holder has a copy. The first time, every access token of the user is ended; the row makes
-- it the first time only, however the family ended (revoked by the reuse, or by a logout with
-- its current token, which a thief holding it may send).
CREATE TABLE refresh_families_reused (
    family_id   uuid PRIMARY KEY,
    detected_at timestamptz NOT NULL DEFAULT now()
);
