-- Whether a job was the first of its size on its device since the model was loaded (issue: ETA under
-- drift). Its decode can be a one-off (buffers, kernels chosen for the shape); the ETA engine learns
-- that extra apart so it never inflates the size's steady decode. NULL: from before this column.
ALTER TABLE jobs ADD COLUMN first_of_size INTEGER;
