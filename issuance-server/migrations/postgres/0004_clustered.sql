-- Tap-log ingestion writes fewer B-trees: the SQLite file turns `taps` and `card_points` into
-- WITHOUT ROWID tables, clustered by their primary keys. PostgreSQL keeps rows in heaps, where
-- nothing corresponds, so this version changes nothing here (it keeps both folders numbered
-- alike; `db::tests` checks that only the files it names differ this way).
SELECT 1;
