-- History and retention (issue 4). A job whose images retention removed keeps its row and timings, so
-- the reports and the ETA go on learning from it; pages say "image removed by retention" instead.
ALTER TABLE jobs ADD COLUMN pruned_at REAL;  -- unix seconds when retention removed its images; NULL: not pruned
-- The history page filters by size and lists jobs newest first within a status.
CREATE INDEX jobs_by_size ON jobs (width, height, created_at);
