-- Tap-log ingestion writes fewer B-trees (issue: back office ingestion throughput). SQLite only:
-- PostgreSQL keeps rows in heaps, where nothing corresponds.
--
-- `taps` and `card_points` become WITHOUT ROWID tables, clustered by their primary keys. A rowid
-- table keeps a primary key other than the rowid as a second B-tree beside the rows, so every
-- stored tap was written twice (rows by rowid, key (terminal_id, seq)) and every card row was
-- found through its key's index and then its row. Clustered, a tap goes once into the B-tree of
-- its terminal's sequence (appended at each terminal's end) and a card's row is its key's entry.
-- Measured with the ingestion benchmark: the SQLite writer's CPU per receipt down by about a
-- tenth (docs/benchmarks.md). Nothing reads the rowid of either table.
--
-- Rebuilt in place, rows and indexes as they were (no table references either).
CREATE TABLE taps_clustered (
    terminal_id BIGINT NOT NULL REFERENCES terminals(id),
    seq BIGINT NOT NULL,
    time BIGINT NOT NULL,
    service BIGINT NOT NULL,
    outcome BIGINT NOT NULL,
    reason BIGINT NOT NULL,
    card_serial BLOB,
    status_index BIGINT,
    status_epoch BIGINT NOT NULL,
    batch_id BIGINT NOT NULL REFERENCES log_batches(id),
    record_hash BLOB,
    status_issued_at BIGINT,
    PRIMARY KEY (terminal_id, seq)
) WITHOUT ROWID;
INSERT INTO taps_clustered (terminal_id, seq, time, service, outcome, reason, card_serial,
    status_index, status_epoch, batch_id, record_hash, status_issued_at)
    SELECT terminal_id, seq, time, service, outcome, reason, card_serial, status_index,
        status_epoch, batch_id, record_hash, status_issued_at FROM taps;
DROP TABLE taps;
ALTER TABLE taps_clustered RENAME TO taps;
CREATE INDEX taps_by_card ON taps (card_serial, time, terminal_id, seq);
CREATE INDEX taps_by_time ON taps (time);

CREATE TABLE card_points_clustered (
    card_serial BLOB PRIMARY KEY,
    receipts BIGINT NOT NULL,
    debited BIGINT NOT NULL,
    top_counter BIGINT NOT NULL,
    top_balance BIGINT NOT NULL,
    last_tap_time BIGINT,
    last_tap_terminal BIGINT,
    last_tap_seq BIGINT
) WITHOUT ROWID;
INSERT INTO card_points_clustered (card_serial, receipts, debited, top_counter, top_balance,
    last_tap_time, last_tap_terminal, last_tap_seq)
    SELECT card_serial, receipts, debited, top_counter, top_balance, last_tap_time,
        last_tap_terminal, last_tap_seq FROM card_points;
DROP TABLE card_points;
ALTER TABLE card_points_clustered RENAME TO card_points;
