-- Version 3: the suppression list's origin, processed bounces, and the dashboard's index.

-- Name of the campaign that caused a suppression (an unsubscribe, a bounce), if any.
ALTER TABLE suppressions ADD COLUMN origin TEXT;

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

-- The dashboard's recent-activity queries: records of one type in a time window.
CREATE INDEX IF NOT EXISTS delivery_log_type_time ON delivery_log (campaign_id, type, time);
