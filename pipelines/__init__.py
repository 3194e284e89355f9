"""Jobs that glue the pieces together: an attack followed by its scoring, used by attack.py, sweeps and the FL audit."""
