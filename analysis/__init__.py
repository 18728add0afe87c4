"""What runs and machines show: the report's figures, the comparison's statistics, a run's label and budget, the docs'
generated tables, the GPU check and its host-wait counter."""
