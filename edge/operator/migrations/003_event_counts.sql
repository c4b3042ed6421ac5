-- Events per review status, kept exact by the store inside the same transaction as every insert, decision and
-- purge (EventStore.add, decide, purge): the queue page shows the three counts on every poll, and COUNT(*) over
-- 100,000 events is a scan on PostgreSQL (no index-only count of a visibility-checked table).
CREATE TABLE event_counts (
    status TEXT PRIMARY KEY,
    n BIGINT NOT NULL
);
INSERT INTO event_counts (status, n) SELECT status, COUNT(*) FROM events GROUP BY status;
INSERT INTO event_counts (status, n) VALUES ('pending', 0), ('confirmed', 0), ('rejected', 0)
    ON CONFLICT (status) DO NOTHING;
