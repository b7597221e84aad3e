-- Version 2: workers on several machines share each relay's limits through the store.

-- Messages each run has sent, so that status can show every worker's rate.
ALTER TABLE runs ADD COLUMN sent INTEGER NOT NULL DEFAULT 0;

-- One row per connection a relay allows; a run holds a row while its session is open.
-- A row whose lease has expired belongs to a run that stopped and can be taken.
CREATE TABLE relay_slots (
    campaign_id INTEGER NOT NULL,
    relay TEXT NOT NULL,
    slot INTEGER NOT NULL,
    owner TEXT,
    lease_until DOUBLE PRECISION,
    PRIMARY KEY (campaign_id, relay, slot)
);

-- A relay's shared message rate (the earliest time of the next send) and its daily count.
CREATE TABLE relay_budget (
    campaign_id INTEGER NOT NULL,
    relay TEXT NOT NULL,
    next_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    day TEXT NOT NULL DEFAULT '',
    sent_today INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, relay)
);
