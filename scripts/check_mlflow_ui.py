"""Check a sweep's MLflow UI in a real browser: `mlflow ui` on 127.0.0.1 over the sweep's store,
headless Chromium driven by Selenium (Debian's chromium + chromium-driver, offline).

    python scripts/check_mlflow_ui.py --mlflow-uri sqlite:////path/mlflow.db \
        --experiment NAME --out ci-artifacts/mlflow-ui

What it asserts, as a new user would see it:
1. the experiment link dmx prints opens the "Model training" runs table (not the GenAI
   overview), listing the trial runs by name (`λu=… T=… p=…`) with `val_acc` and the searched
   params as columns, and its chart view starts with the objective;
2. MLflow's Compare page of two trials renders the objective `val_acc`, and its parallel
   coordinates plot starts on it.
Screenshots of both pages go to --out. Exit 0 when every check passes; the failures are printed
otherwise. `tests/test_sweep_e2e.py` runs it on a small sweep (marked slow; CI installs Chromium).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = os.environ.get("DMX_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DMX_CHROMEDRIVER", "/usr/bin/chromedriver")
# The network is closed: no first-run pages, component updates, sync or background requests.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1920,1080",
)


def browser_available() -> str:
    """ "" when Chromium and its driver are installed, else what is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    return ", ".join(missing)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mlflow_ui(tracking_uri: str, *, timeout: float = 120) -> Iterator[str]:
    """`mlflow ui` on 127.0.0.1 over `tracking_uri`; yields its base URL, stops it after."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                raise RuntimeError(f"mlflow ui did not start: {log.read().decode()[-2000:]}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium with a fresh profile, driven by Selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="dmx-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for_text(driver, texts: list[str], *, timeout: float = 60) -> str:
    """The page's visible text once it holds every string of `texts` (or at the timeout)."""
    deadline = time.time() + timeout
    body = ""
    while time.time() < deadline:
        body = driver.execute_script("return document.body ? document.body.innerText : ''")
        if all(t in body for t in texts):
            return body
        time.sleep(1)
    return body


HEADERS_JS = """
const cells = '.ag-header-cell, .ag-header-group-cell, [role=columnheader]';
return Array.from(document.querySelectorAll(cells))
  .map(e => (e.innerText || e.textContent || '').trim()).filter(t => t);
"""
NAV_JS = """
return Array.from(document.querySelectorAll('nav a, nav li, aside a'))
  .map(e => (e.innerText || '').trim()).filter(t => t);
"""


def model_training_view(driver) -> bool:
    """The sidebar of MLflow 3.17's "Model training" view lists Runs / Models / Traces; the GenAI
    view lists Overview / Training runs / Observability instead."""
    nav = driver.execute_script(NAV_JS)
    return "Runs" in nav and "Overview" not in nav and "Observability" not in nav


def check_ui(tracking_uri: str, experiment: str, out_dir: str | Path) -> list[str]:
    """Run the checks; returns the failures ([] = all good). Screenshots go to `out_dir`."""
    from mlflow import MlflowClient

    from dmx.tracking import ROLE_TAG, ui

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [f"no experiment {experiment!r} in {tracking_uri}"]
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    parent = next((r for r in runs if r.data.tags.get(ROLE_TAG) == "sweep"), None)
    searched = (
        sorted(
            k.removeprefix("sweep.search.")
            for k in parent.data.params
            if k.startswith("sweep.search.")
        )
        if parent
        else []
    )
    failures: list[str] = []
    with mlflow_ui(tracking_uri) as base, chromium() as driver:
        # 1. The experiment as dmx links it: Model training view, trials listed, columns shown.
        driver.get(ui.experiment_url(base, exp.experiment_id))
        names = [r.info.run_name for r in trials]
        columns = ["val_acc", *searched]
        body = wait_for_text(driver, names)
        headers = []
        deadline = time.time() + 30
        while time.time() < deadline and not all(c in " ".join(headers) for c in columns):
            time.sleep(1)
            headers = driver.execute_script(HEADERS_JS)
        driver.save_screenshot(str(out / "experiment_runs.png"))
        for name in names:
            if name not in body:
                failures.append(f"runs table: trial run {name!r} not listed")
        for column in columns:
            if not any(column in h for h in headers):
                failures.append(f"runs table: no column {column!r} (headers: {headers})")
        if not model_training_view(driver) or "Detect Issues" in body:
            failures.append("experiment page opened the GenAI view, not Model training")
        (out / "experiment_runs.txt").write_text(body + "\n\nHEADERS\n" + "\n".join(headers))
        # 1b. Its chart view: the saved charts start with the objective.
        driver.get(ui.experiment_url(base, exp.experiment_id) + "&compareRunsMode=CHART")
        body = wait_for_text(driver, ["val_acc", "auc_net1"])
        time.sleep(2)
        driver.save_screenshot(str(out / "experiment_charts.png"))
        (out / "experiment_charts.txt").write_text(body)
        others = [body.find(m) for m in ("test_acc", "auc_net1", "lr") if m in body]
        if "val_acc" not in body or (others and body.find("val_acc") > min(others)):
            failures.append("chart view: the first chart is not the objective val_acc")
        # 2. Compare two trials: the objective is rendered, the parallel plot starts on it.
        pair = [r.info.run_id for r in trials[:2]]
        driver.get(ui.compare_url(base, exp.experiment_id, pair))
        body = wait_for_text(driver, ["val_acc", "Parallel Coordinates"])
        time.sleep(2)  # let the plot draw before the screenshot
        driver.save_screenshot(str(out / "compare_runs.png"))
        (out / "compare_runs.txt").write_text(body)
        if "val_acc" not in body:
            failures.append("compare page: the objective val_acc is not shown")
        if not model_training_view(driver):
            failures.append("compare page: opened in the GenAI view")
        # The parallel-coordinates plot's axes: the searched params and, last, the objective.
        axes = driver.execute_script(
            "return Array.from(document.querySelectorAll('.js-plotly-plot .axis-title'))"
            ".map(e => e.textContent);"
        )
        (out / "compare_runs.json").write_text(json.dumps({"axes": axes}))
        if not axes or axes[-1] != "val_acc":
            failures.append(f"compare page: the parallel plot does not end on val_acc ({axes})")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mlflow-uri", required=True, help="the sweep's MLflow store")
    parser.add_argument("--experiment", required=True, help="the sweep's experiment name")
    parser.add_argument("--out", default="ci-artifacts/mlflow-ui", help="screenshot folder")
    args = parser.parse_args(argv)
    missing = browser_available()
    if missing:
        print(
            f"missing: {missing} (apt-get install chromium chromium-driver; pip install selenium)",
            file=sys.stderr,
        )
        return 2
    failures = check_ui(args.mlflow_uri, args.experiment, args.out)
    for failure in failures:
        print(f"FAIL {failure}")
    print(f"screenshots in {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
