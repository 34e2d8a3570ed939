"""Analysis of dmx sweeps, read back from MLflow.

- `analysis.runs`: MLflow experiment -> tidy tables (one row per trial; long metric histories).
- `analysis.compare`: CLI, ranked table + CSV/parquet, best setting, objective-vs-test rank
  correlation, mean ± std over seeds.
- `analysis.plots`: PNG plots (accuracy curves, objective vs params, Optuna importances, division
  quality, per-sample loss histogram with its GMM).
- `analysis.report`: CLI, one self-contained HTML page.

Run the CLIs as modules from the repository root: `python -m analysis.compare --experiment NAME`,
`python -m analysis.plots ...`, `python -m analysis.report ...`.
"""
