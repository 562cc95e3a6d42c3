-- Every text column of a primary key or an index compares as bytes (COLLATE "C"), as SQLite's
-- do (its BINARY collation), so there is nothing to change in ../sqlite.
--
-- Under the database's default collation (here C.UTF-8, whatever initdb chose elsewhere)
-- PostgreSQL compares two keys with the C library's strcoll, which costs far more than a byte
-- comparison; a POST /exams saga inserts about 14 index entries, each found by such
-- comparisons. These columns hold ids, uuids, digests, names and statuses, which are looked up
-- by equality and ordered only to page through them: byte order serves both. Equality itself
-- does not change (a deterministic collation's equal strings are equal bytes). Measured with
-- `saga-bench cluster --clients 32`, one after the other: 0.23 ms of PostgreSQL CPU per saga
-- against 0.27-0.28 ms.
--
-- The aggregates' own fields (the indexes on `data`) keep the default collation: a service
-- orders by them, and people expect their language's order there.
--
-- Changing a column's collation rewrites no table, but rebuilds the indexes on the column.

ALTER TABLE snapshots
    ALTER COLUMN service TYPE TEXT COLLATE "C",
    ALTER COLUMN uuid TYPE TEXT COLLATE "C",
    ALTER COLUMN aggregate TYPE TEXT COLLATE "C";

ALTER TABLE events
    ALTER COLUMN service TYPE TEXT COLLATE "C",
    ALTER COLUMN uuid TYPE TEXT COLLATE "C";

ALTER TABLE staged_snapshots
    ALTER COLUMN service TYPE TEXT COLLATE "C",
    ALTER COLUMN uuid TYPE TEXT COLLATE "C",
    ALTER COLUMN saga TYPE TEXT COLLATE "C",
    ALTER COLUMN aggregate TYPE TEXT COLLATE "C";

ALTER TABLE staged_events
    ALTER COLUMN saga TYPE TEXT COLLATE "C";

ALTER TABLE staged_messages
    ALTER COLUMN saga TYPE TEXT COLLATE "C";

ALTER TABLE consumed
    ALTER COLUMN consumer TYPE TEXT COLLATE "C",
    ALTER COLUMN message_id TYPE TEXT COLLATE "C";

ALTER TABLE sagas
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN service TYPE TEXT COLLATE "C",
    ALTER COLUMN name TYPE TEXT COLLATE "C",
    ALTER COLUMN version TYPE TEXT COLLATE "C",
    ALTER COLUMN status TYPE TEXT COLLATE "C",
    ALTER COLUMN owner TYPE TEXT COLLATE "C";

ALTER TABLE saga_history
    ALTER COLUMN saga TYPE TEXT COLLATE "C";

ALTER TABLE hosts
    ALTER COLUMN id TYPE TEXT COLLATE "C";

ALTER TABLE host_topics
    ALTER COLUMN host TYPE TEXT COLLATE "C",
    ALTER COLUMN service TYPE TEXT COLLATE "C",
    ALTER COLUMN kind TYPE TEXT COLLATE "C",
    ALTER COLUMN topic TYPE TEXT COLLATE "C";

ALTER TABLE idempotency
    ALTER COLUMN service TYPE TEXT COLLATE "C",
    ALTER COLUMN route TYPE TEXT COLLATE "C",
    ALTER COLUMN idempotency_key TYPE TEXT COLLATE "C";

ALTER TABLE component_versions
    ALTER COLUMN digest TYPE TEXT COLLATE "C";

ALTER TABLE cluster_components
    ALTER COLUMN service TYPE TEXT COLLATE "C";

ALTER TABLE host_components
    ALTER COLUMN host TYPE TEXT COLLATE "C",
    ALTER COLUMN service TYPE TEXT COLLATE "C";
