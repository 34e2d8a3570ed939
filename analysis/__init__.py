"""Analysis of dmx sweeps, read back from MLflow.

- `analysis.runs`: MLflow experiment -> tidy tables (one row per trial; long metric histories),
  and the grouping of trials into configurations (mean ± std over seeds).
- `analysis.compare`: CLI, ranked table + CSV/parquet, best setting, objective-vs-test rank
  correlation, mean ± std per configuration.
- `analysis.paper_table`: CLI, a paper grid's results beside the paper's numbers (dmx.paper).
- `analysis.plots`: PNG plots (accuracy curves, objective vs params, Optuna importances, division
  quality, per-sample loss histogram with its GMM).
- `analysis.report`: CLI, one self-contained HTML page.

`pip install -e .` installs this package with dmx: run the CLIs as modules
(`python -m analysis.compare --experiment NAME`) or as scripts
(`python analysis/paper_table.py --experiment NAME`).
"""
