-- A saga's state and its whole history in one value of its row, `record`, which the host packs
-- (host/src/saga/packed.rs: zstd with a dictionary of the engine's words). A transition's commit
-- touches one B-tree fewer (the history's, at a random key), and no primary key of history rows
-- is kept (53 bytes a saga). The history rows are folded in here as the host's text form — the
-- state's line, then one line per stored revision — which it reads as it is and packs at the
-- saga's next transition. The column keeps its declared TEXT (SQLite cannot change it in
-- place); it holds BLOBs, and storage never looks inside.
ALTER TABLE sagas RENAME COLUMN state TO record;
UPDATE sagas SET record = CAST(record || char(10) || coalesce(
    (SELECT group_concat(entries, char(10) ORDER BY revision) || char(10)
     FROM saga_history WHERE saga = sagas.id), '') AS BLOB);
DROP TABLE saga_history;
