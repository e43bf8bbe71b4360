-- txmail schema 2: reserved for the mail store (issue 13, the store's
-- migration is numbered 2).  This placeholder keeps the migrations of the
-- queue branch numbered without gaps; it is replaced by the store's own
-- 0002 migration when the branches merge.
SELECT 1;
