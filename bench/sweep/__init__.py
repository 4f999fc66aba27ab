"""gmembench sweep: many runs over axes of workload keys, model parameters, strategy
options and cost-profile values, executed as independent tasks on Dask distributed.

spec.py reads and checks a sweep file; task.py defines one task (point x strategy x
repetition) and its content-addressed key; engine.py runs tasks on a Dask cluster with a
cache; tidy.py writes the tidy table; analysis.py draws conclusions and sensitivity;
plots.py and report.py present them; cli.py is `gmembench sweep`.
"""
