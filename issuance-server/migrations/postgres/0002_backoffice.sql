-- The back office (issue 6), PostgreSQL form. It is migrations/sqlite/0002_backoffice.sql with
-- the spellings of 0001_initial.sql changed (a unit test keeps them in step): BLOB is BYTEA here.
-- See the SQLite file for the comments.

-- Where a terminal stands, in micro-degrees of WGS 84 latitude and longitude; NULL when not
-- given at registration.
ALTER TABLE terminals ADD COLUMN latitude BIGINT;
ALTER TABLE terminals ADD COLUMN longitude BIGINT;

-- SHA-256 of the record's exact encoding: a record sent again must be byte-identical. The issue
-- time of the status list the terminal decided with. NULL for records stored before this.
ALTER TABLE taps ADD COLUMN record_hash BYTEA;
ALTER TABLE taps ADD COLUMN status_issued_at BIGINT;
-- A card's taps in time order, covering what the impossible-travel check reads; taps of a
-- period (usage statistics).
CREATE INDEX taps_by_card ON taps (card_serial, time, terminal_id, seq);
CREATE INDEX taps_by_time ON taps (time);

-- The tap record (terminal_id, tap_seq) that brought the receipt in; NULL before this.
ALTER TABLE receipts ADD COLUMN tap_seq BIGINT;

-- The ledger's running totals per card, a summary of `receipts` kept in the same transaction:
-- receipts stored, points debited, the highest counter and its balance_after. A batch checks a
-- card's new receipts against these instead of reading the card's whole history.
CREATE TABLE card_points (
    card_serial BYTEA PRIMARY KEY,
    receipts BIGINT NOT NULL,
    debited BIGINT NOT NULL,
    top_counter BIGINT NOT NULL,
    top_balance BIGINT NOT NULL
);
INSERT INTO card_points (card_serial, receipts, debited, top_counter, top_balance)
    SELECT r.card_serial, COUNT(*), SUM(r.amount), MAX(r.counter),
        (SELECT t.balance_after FROM receipts t WHERE t.card_serial = r.card_serial
         ORDER BY t.counter DESC LIMIT 1)
    FROM receipts r GROUP BY r.card_serial;

-- Anomalies: `evidence` is a JSON object with the numbers and records behind `detail`;
-- `fingerprint` names the finding (kind-specific, e.g. card and counter range) so that the same
-- finding is never stored twice, whichever batch shows it again; `resolved_at` is set when later
-- uploads explain it (a counter or sequence gap filled).
ALTER TABLE anomalies ADD COLUMN evidence TEXT NOT NULL DEFAULT '{}';
ALTER TABLE anomalies ADD COLUMN fingerprint TEXT;
ALTER TABLE anomalies ADD COLUMN resolved_at BIGINT;
CREATE UNIQUE INDEX anomalies_once ON anomalies (kind, fingerprint);
CREATE INDEX anomalies_by_card ON anomalies (card_serial, id);
CREATE INDEX anomalies_by_terminal ON anomalies (terminal_id, id);
