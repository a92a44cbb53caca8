-- saas-events: the queue tables' text keys compare bytewise (COLLATE "C"). Every claim
-- walks `jobs_ready` by queue and checks kinds and states, and with the database's collation
-- (C.UTF-8, en_US.UTF-8 …) each of those comparisons went through strcoll. Equality is
-- unchanged (every deterministic collation compares equal bytes as equal); only an
-- ORDER BY on these columns now sorts by byte, and the queue orders by priority, time
-- and id. The indexes on these columns are rebuilt.

ALTER TABLE saas.jobs
    ALTER COLUMN queue TYPE text COLLATE "C",
    ALTER COLUMN kind TYPE text COLLATE "C",
    ALTER COLUMN state TYPE text COLLATE "C",
    ALTER COLUMN unique_key TYPE text COLLATE "C",
    ALTER COLUMN order_key TYPE text COLLATE "C";

ALTER TABLE saas.jobs_done
    ALTER COLUMN queue TYPE text COLLATE "C",
    ALTER COLUMN kind TYPE text COLLATE "C",
    ALTER COLUMN unique_key TYPE text COLLATE "C";
