"""Write docker/constraints.txt: every package the Docker image installs, at one version.

    python docker/lock.py        # from the repository root, in the tested venv

pip resolves `.[cluster]` (dmx + ray[default]) without installing anything (`--dry-run
--report`); a package the current venv has is pinned at the venv's version (the one the tests
ran with: torch, Ray, MLflow, Optuna, ...), the rest at pip's choice. The image installs with
`pip install -c docker/constraints.txt`, so a head and workers built on different days agree.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HEADER = """\
# Versions the Docker image installs (pip install -c docker/constraints.txt ".[cluster]"), so that
# a head and workers built on different days run the same stack: the tested venv's versions
# (torch, Ray, MLflow, Optuna, ...) plus what ray[default] adds, as pip resolved them.
# Regenerate with `python docker/lock.py` after a dependency change, and commit the result.
"""


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them: prometheus_client -> prometheus-client."""
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve(extra: str = "cluster") -> list[tuple[str, str]]:
    """(name, version) of everything `pip install .[extra]` would install, dmx excluded."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--report",
                str(report),
                f".[{extra}]",
            ],
            check=True,
        )
        installs = json.loads(report.read_text())["install"]
    tested = {normalize(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    pins = {}
    for item in installs:
        name = normalize(item["metadata"]["name"])
        if name != "dmx":
            pins[name] = tested.get(name, item["metadata"]["version"])
    return sorted(pins.items())


def main() -> int:
    pins = resolve()
    text = HEADER + "".join(f"{name}=={version}\n" for name, version in pins)
    Path(__file__).with_name("constraints.txt").write_text(text)
    print(f"pinned {len(pins)} packages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
