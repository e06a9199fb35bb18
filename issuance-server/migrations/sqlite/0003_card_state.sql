-- Tap-log ingestion reads one row per card (issue: back office ingestion throughput). SQLite
-- form; the PostgreSQL file is this one with the spellings of 0001_initial.sql changed.
--
-- card_points also keeps each card's latest tap, by (time, terminal_id, seq): when a card's new
-- taps all come after it, that tap is the only stored one the impossible-travel rule compares
-- them with, so no search of taps_by_card is needed. A card's row exists once it has a tap or a
-- receipt; `receipts = 0` means it has no receipt yet (top_counter and top_balance are then 0
-- and mean nothing).
ALTER TABLE card_points ADD COLUMN last_tap_time BIGINT;
ALTER TABLE card_points ADD COLUMN last_tap_terminal BIGINT;
ALTER TABLE card_points ADD COLUMN last_tap_seq BIGINT;
INSERT INTO card_points (card_serial, receipts, debited, top_counter, top_balance)
    SELECT DISTINCT t.card_serial, 0, 0, 0, 0 FROM taps t WHERE t.card_serial IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM card_points p WHERE p.card_serial = t.card_serial);
UPDATE card_points SET
    last_tap_time = (SELECT t.time FROM taps t WHERE t.card_serial = card_points.card_serial
        ORDER BY t.time DESC, t.terminal_id DESC, t.seq DESC LIMIT 1),
    last_tap_terminal = (SELECT t.terminal_id FROM taps t
        WHERE t.card_serial = card_points.card_serial
        ORDER BY t.time DESC, t.terminal_id DESC, t.seq DESC LIMIT 1),
    last_tap_seq = (SELECT t.seq FROM taps t WHERE t.card_serial = card_points.card_serial
        ORDER BY t.time DESC, t.terminal_id DESC, t.seq DESC LIMIT 1);
