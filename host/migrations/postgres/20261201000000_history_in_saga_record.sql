-- A saga's state and its whole history in one value of its row, `record`, which the host packs
-- (host/src/saga/packed.rs: zstd with a dictionary of the engine's words). A transition's commit
-- touches one table and index fewer, and no primary key of history rows is kept. The history
-- rows are folded in here as the host's text form — the state's line, then one line per stored
-- revision — which it reads as it is and packs at the saga's next transition.
ALTER TABLE sagas RENAME COLUMN state TO record;
UPDATE sagas SET record = record || E'\n' || coalesce(
    (SELECT string_agg(entries, E'\n' ORDER BY revision) || E'\n'
     FROM saga_history WHERE saga = sagas.id), '');
ALTER TABLE sagas ALTER COLUMN record TYPE bytea USING convert_to(record, 'UTF8');
DROP TABLE saga_history;
