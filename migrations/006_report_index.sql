-- Reports filter and group ended jobs by when they ended (zimage_sse/reports.py); without this index
-- every date filter scans the whole jobs table.
CREATE INDEX jobs_by_finished ON jobs (status, finished_at);
