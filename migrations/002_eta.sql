-- What the ETA engine learns from and how accurate it was (issue: learned ETA).
ALTER TABLE jobs ADD COLUMN gpu_util_start REAL;   -- % utilisation when the job started (pynvml), NULL on CPU
ALTER TABLE jobs ADD COLUMN gpu_util_mean REAL;    -- mean % utilisation sampled during the job
ALTER TABLE jobs ADD COLUMN gpu_mem_peak_mb REAL;  -- highest device memory in use during the job

CREATE TABLE eta_predictions (
    job_id            TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    point             REAL NOT NULL CHECK (point IN (0, 0.1, 0.25, 0.5)),  -- share of the actual run time
    predicted_total_s REAL,                                                  -- NULL: no estimate yet
    actual_total_s    REAL NOT NULL,
    PRIMARY KEY (job_id, point)
) WITHOUT ROWID;
