-- A sender's warm-up ramp: `warmup_start` emails a day on the day it started, `warmup_step`
-- more each day after, never more than `warmup_max`. The day's limit is computed from these
-- dates (pacing days of DISPATCH_DAY_SECONDS), so it survives restarts and Redis losses.
ALTER TABLE senders
    ADD COLUMN warmup_start integer CHECK (warmup_start > 0),
    ADD COLUMN warmup_step integer CHECK (warmup_step >= 0),
    ADD COLUMN warmup_max integer,
    ADD COLUMN warmup_started_at timestamptz,
    ADD CONSTRAINT senders_warmup_whole CHECK (
        (warmup_start IS NULL) = (warmup_step IS NULL)
        AND (warmup_start IS NULL) = (warmup_max IS NULL)
        AND (warmup_start IS NULL) = (warmup_started_at IS NULL)
        AND (warmup_max IS NULL OR warmup_max >= warmup_start)
    );
