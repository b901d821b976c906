-- How many times a job has been started (issue: reliability). A job that was running when the server died
-- is queued again once; if it dies a second time it fails with a reason instead of looping.
ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
