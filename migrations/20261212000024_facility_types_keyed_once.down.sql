-- The types rekeyed stay as they are: the spelling they had is not kept.
SELECT 1;
