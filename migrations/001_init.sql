-- Jobs and the timings of every step and phase (DESIGN.md "Storage").
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    created_at      REAL NOT NULL,            -- unix seconds
    started_at      REAL,
    finished_at     REAL,
    status          TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    prompt          TEXT NOT NULL,
    negative_prompt TEXT NOT NULL DEFAULT '',
    width           INTEGER NOT NULL,
    height          INTEGER NOT NULL,
    steps           INTEGER NOT NULL,
    guidance        REAL NOT NULL,
    seed            INTEGER NOT NULL,
    num_images      INTEGER NOT NULL,
    model           TEXT NOT NULL,
    device          TEXT,
    dtype           TEXT,
    warm_up         INTEGER,                  -- 1: first generation after the model was loaded
    error           TEXT,
    images          TEXT NOT NULL DEFAULT '[]' -- JSON list of file names under the images directory
);
CREATE INDEX jobs_by_created ON jobs (created_at);
CREATE INDEX jobs_by_status ON jobs (status, created_at);

CREATE TABLE step_timings (
    job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step    INTEGER NOT NULL,                 -- 1-based
    seconds REAL NOT NULL,
    PRIMARY KEY (job_id, step)
) WITHOUT ROWID;

CREATE TABLE phase_timings (
    job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    phase   TEXT NOT NULL CHECK (phase IN ('loading', 'encoding', 'denoising', 'decoding', 'saving')),
    seconds REAL NOT NULL,
    PRIMARY KEY (job_id, phase)
) WITHOUT ROWID;
