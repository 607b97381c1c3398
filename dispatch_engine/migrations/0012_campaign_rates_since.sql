-- Where a campaign's bounce and complaint rates count from (NULL: from its first email). A
-- user's resume of a campaign that paused itself sets it to now: the campaign gets a fresh
-- DISPATCH_PAUSE_MIN_SENT sends before its rates can pause it again.
ALTER TABLE campaigns ADD COLUMN rates_since timestamptz;
