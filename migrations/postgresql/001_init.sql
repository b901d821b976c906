-- The PostgreSQL store's schema (zimage_sse/db/postgres.py): the SQLite schema after its migrations
-- 001-007 (migrations/*.sql, which say what each column means), in one step. Kept equivalent so both
-- backends answer every query with the same rows:
--   REAL there is DOUBLE PRECISION here (PostgreSQL's REAL has 4 bytes, SQLite's 8);
--   seed is BIGINT (SQLite's INTEGER holds 8 bytes, PostgreSQL's 4);
--   every text column uses the C collation: it compares and sorts by byte, as SQLite's BINARY does,
--   whatever locale the database was created with;
--   seq keeps insertion order, which SQLite's rowid gives there (ties of created_at); the store leaves
--   it out of the rows it returns.
-- Later migrations add what the distributed queue needs (a lease per attempt), as 002_… and on.
CREATE TABLE jobs (
    id              TEXT COLLATE "C" PRIMARY KEY,
    created_at      DOUBLE PRECISION NOT NULL,
    started_at      DOUBLE PRECISION,
    finished_at     DOUBLE PRECISION,
    status          TEXT COLLATE "C" NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    prompt          TEXT COLLATE "C" NOT NULL,
    negative_prompt TEXT COLLATE "C" NOT NULL DEFAULT '',
    width           INTEGER NOT NULL,
    height          INTEGER NOT NULL,
    steps           INTEGER NOT NULL,
    guidance        DOUBLE PRECISION NOT NULL,
    seed            BIGINT NOT NULL,
    num_images      INTEGER NOT NULL,
    model           TEXT COLLATE "C" NOT NULL,
    device          TEXT COLLATE "C",
    dtype           TEXT COLLATE "C",
    warm_up         INTEGER,
    error           TEXT COLLATE "C",
    images          TEXT COLLATE "C" NOT NULL DEFAULT '[]',
    gpu_util_start  DOUBLE PRECISION,
    gpu_util_mean   DOUBLE PRECISION,
    gpu_mem_peak_mb DOUBLE PRECISION,
    attempts        INTEGER NOT NULL DEFAULT 0,
    pruned_at       DOUBLE PRECISION,
    first_of_size   INTEGER,
    seq             BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
);
CREATE INDEX jobs_by_created ON jobs (created_at);
CREATE INDEX jobs_by_status ON jobs (status, created_at);
CREATE INDEX jobs_by_size ON jobs (width, height, created_at);
CREATE INDEX jobs_by_finished ON jobs (status, finished_at);

CREATE TABLE step_timings (
    job_id  TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step    INTEGER NOT NULL,
    seconds DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, step)
);

CREATE TABLE phase_timings (
    job_id  TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    phase   TEXT COLLATE "C" NOT NULL CHECK (phase IN ('loading', 'encoding', 'denoising', 'decoding', 'saving')),
    seconds DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, phase)
);

CREATE TABLE eta_predictions (
    job_id            TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    point             DOUBLE PRECISION NOT NULL CHECK (point IN (0, 0.1, 0.25, 0.5)),
    predicted_total_s DOUBLE PRECISION,
    actual_total_s    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, point)
);

CREATE TABLE model_loads (
    load_id    TEXT COLLATE "C" NOT NULL,
    loaded_at  DOUBLE PRECISION NOT NULL,
    model      TEXT COLLATE "C" NOT NULL,
    device     TEXT COLLATE "C" NOT NULL,
    dtype      TEXT COLLATE "C" NOT NULL,
    component  TEXT COLLATE "C" NOT NULL,
    seconds    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (load_id, component)
);
CREATE INDEX model_loads_by_model ON model_loads (model, device, dtype, loaded_at);
