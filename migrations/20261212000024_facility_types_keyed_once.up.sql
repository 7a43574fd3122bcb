-- Facility types as the service now keys them (see `type_key`): characters that show nothing
-- dropped, each run of spaces (a non-breaking one pasted from a web page, two typed), hyphens and
-- underscores one underscore. A type stored as `health__center` before would no longer meet the
-- filter `type=health_center`, nor the same type typed again.
UPDATE facilities f SET type = k.keyed
FROM (
    SELECT id,
           btrim(regexp_replace(
                     regexp_replace(type,
                                    '[\u00AD\u115F\u1160\u180E\u200B-\u200F\u202A-\u202E\u2060-\u2069\u3164\uFEFF\uFFA0]',
                                    '', 'g'),
                     '[\u0020\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000_-]+', '_', 'g'),
                 '_') AS keyed
    FROM facilities
) k
WHERE f.id = k.id AND k.keyed <> f.type AND k.keyed <> '';
