-- Events as received (one row per event_id: the database dedups), the review state, and the devices' last reports.
-- {id} is the dialect's auto-increment primary key. Portable SQL otherwise (SQLite 3.24+, PostgreSQL 12+).
CREATE TABLE events (
    event_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    captured_at DOUBLE PRECISION NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    subject_id TEXT NOT NULL,
    watchlist_id TEXT NOT NULL,
    watchlist_version BIGINT NOT NULL,
    similarity DOUBLE PRECISION NOT NULL,
    threshold DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    body TEXT NOT NULL
);
CREATE INDEX events_by_status ON events (status, received_at);
CREATE INDEX events_by_device_seq ON events (device_id, seq);
CREATE INDEX events_by_received ON events (received_at);
CREATE TABLE decisions (
    id {id},
    event_id TEXT NOT NULL REFERENCES events (event_id) ON DELETE CASCADE,
    reviewer TEXT NOT NULL,
    decision TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    decided_at DOUBLE PRECISION NOT NULL,
    UNIQUE (event_id, reviewer)
);
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY,
    online INTEGER,
    last_seen TEXT,
    health TEXT,
    watchlist_version BIGINT,
    watchlist_state TEXT,
    watchlist_reason TEXT,
    updated_at DOUBLE PRECISION NOT NULL
);
