-- mailblast store schema, version 1 (SQLite).
-- One row per message; the delivery log is append-only; the suppression list is shared by
-- campaigns (campaign_id 0 means every campaign).

CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS campaigns (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    settings TEXT NOT NULL,               -- Campaign.to_dict() as JSON: templates and secret references
    status TEXT NOT NULL DEFAULT 'active',  -- active | paused | cancelled | done
    status_reason TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    loaded_at REAL,                       -- set once the whole list is in the queue
    load_line INTEGER NOT NULL DEFAULT 0, -- last list line committed, so a killed load resumes
    rows_read INTEGER NOT NULL DEFAULT 0,
    rows_rejected INTEGER NOT NULL DEFAULT 0,
    rows_duplicate INTEGER NOT NULL DEFAULT 0,
    rows_suppressed INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    campaign_id INTEGER NOT NULL REFERENCES campaigns (id),
    line INTEGER NOT NULL,
    address TEXT NOT NULL,
    key TEXT NOT NULL,
    smtputf8 INTEGER NOT NULL DEFAULT 0,
    fields TEXT NOT NULL,                 -- the row's columns as a JSON object
    state TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at REAL NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until REAL,
    in_flight INTEGER NOT NULL DEFAULT 0, -- 1 from just before the end of DATA until the outcome
    relay TEXT,
    last_code INTEGER,
    last_status TEXT,
    last_reply TEXT,
    first_attempt_at REAL,
    updated_at REAL,
    UNIQUE (campaign_id, key)
);

CREATE INDEX IF NOT EXISTS messages_claim ON messages (campaign_id, state, due_at);

CREATE TABLE IF NOT EXISTS delivery_log (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    campaign_id INTEGER NOT NULL,
    message INTEGER,                      -- messages.id; NULL for rows rejected at load
    message_id TEXT,                      -- the Message-ID header
    recipient TEXT,
    type TEXT NOT NULL,
    relay TEXT,
    attempt INTEGER,
    command TEXT,
    code INTEGER,
    status TEXT,
    text TEXT,
    duration REAL,
    line INTEGER
);

CREATE INDEX IF NOT EXISTS delivery_log_campaign ON delivery_log (campaign_id, id);
-- The dashboard's recent-activity queries: records of one type in a time window.
CREATE INDEX IF NOT EXISTS delivery_log_type_time ON delivery_log (campaign_id, type, time);

CREATE TABLE IF NOT EXISTS suppressions (
    key TEXT NOT NULL,
    campaign_id INTEGER NOT NULL DEFAULT 0,
    address TEXT NOT NULL,
    reason TEXT NOT NULL,                 -- unsubscribed | hard-bounce | complaint | manual
    time REAL NOT NULL,                   -- when it was first added; re-adding keeps it
    origin TEXT,                          -- name of the campaign that caused it, if any
    PRIMARY KEY (key, campaign_id)
);

CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    campaign_id INTEGER NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);

-- Returned messages already processed, one row per message and recipient, so that processing
-- the same bounce again changes nothing. Soft bounces are counted per address key here.
CREATE TABLE IF NOT EXISTS bounces (
    id TEXT PRIMARY KEY,                  -- fingerprint of the returned message, "\n", address key
    key TEXT NOT NULL,
    class TEXT NOT NULL,                  -- hard | soft | delayed | block | complaint | unsubscribe
    campaign_id INTEGER NOT NULL,         -- 0 when no campaign is known
    message INTEGER,                      -- messages.id, when matched
    time REAL NOT NULL
);

CREATE INDEX IF NOT EXISTS bounces_key ON bounces (key, class);
