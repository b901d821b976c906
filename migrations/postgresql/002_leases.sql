-- The queue across machines (zimage_sse/db/leases.py PgQueue): a running job is held by a lease that
-- its worker renews; every process reaps the leases that ran out, by the database's clock. None of
-- these columns is in the rows the store returns (PgStore._HIDDEN): both backends keep the same rows.
--   worker:           the worker process that claimed the job last (kept after the job ends);
--   lease_until:      while running, when the job is taken from that worker unless it renews first;
--   cancel_requested: a cancel for a running job; the worker's next renewal returns it, so a lost
--                     control message delays the cancel, never loses it;
--   front:            a job given back by a stopping worker runs first, as the embedded queue's
--                     put(front=True) does: the newest such job first, then the rest by created_at.
ALTER TABLE jobs ADD COLUMN worker TEXT COLLATE "C";
ALTER TABLE jobs ADD COLUMN lease_until TIMESTAMPTZ;
ALTER TABLE jobs ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE jobs ADD COLUMN front BIGINT;
CREATE SEQUENCE jobs_front;

-- Claiming reads the first queued job in exactly this order; reaping reads the running leases.
CREATE INDEX jobs_queue ON jobs (front DESC NULLS LAST, created_at, seq) WHERE status = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_until) WHERE status = 'running';
