-- Facility codes as the service now keeps them (see `facility_code`): every kind of space (a
-- non-breaking one pasted from a web page, a run of them) one plain space, invisible characters
-- (zero-width spaces, direction marks, soft hyphens, a byte order mark) dropped. A code stored
-- otherwise before would no longer meet its own spelling in an import, which would make it a
-- second facility. A code that would become another's is left as it is.
CREATE TEMP TABLE respaced ON COMMIT DROP AS
SELECT id, code,
       btrim(regexp_replace(regexp_replace(code, '[\u00AD\u200B-\u200F\u2060\uFEFF]', '', 'g'),
                            '[\u0020\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]+',
                            ' ', 'g')) AS spaced
FROM facilities;
UPDATE facilities f SET code = r.spaced
FROM respaced r
WHERE f.id = r.id AND r.spaced <> r.code AND r.spaced <> ''
  AND (SELECT count(*) FROM respaced o WHERE lower(o.spaced) = lower(r.spaced)) = 1;
