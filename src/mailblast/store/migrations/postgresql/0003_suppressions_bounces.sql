-- Version 3: the suppression list's origin, processed bounces, and the dashboard's index.

-- Name of the campaign that caused a suppression (an unsubscribe, a bounce), if any.
ALTER TABLE suppressions ADD COLUMN origin TEXT;

-- Returned messages already processed, one row per message and recipient, so that processing
-- the same bounce again changes nothing. Soft bounces are counted per address key here.
CREATE TABLE bounces (
    id TEXT PRIMARY KEY,                  -- fingerprint of the returned message, "\n", address key
    key TEXT NOT NULL,
    class TEXT NOT NULL,                  -- hard | soft | delayed | block | complaint | unsubscribe
    campaign_id BIGINT NOT NULL,          -- 0 when no campaign is known
    message BIGINT,                       -- messages.id, when matched
    time DOUBLE PRECISION NOT NULL
);

CREATE INDEX bounces_key ON bounces (key, class);

-- The dashboard's recent-activity queries: records of one type in a time window.
CREATE INDEX delivery_log_type_time ON delivery_log (campaign_id, type, time);
