"""A sweep of runs (the results table, the curriculum comparison): its plan, and launching it locally or on Slurm."""
