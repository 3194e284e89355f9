"""Studies: grids of train.py + attack.py cells (resumable), their tables, pictures and reports."""
