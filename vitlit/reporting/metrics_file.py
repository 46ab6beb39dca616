"""metrics.json: the one file every run folder gets, with the final metrics under ``"final"``.

The run report adds its pictures' numbers to it; sweep summaries read it back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitlit.reporting.atomic_files import write_text_atomically

METRICS_FILE = "metrics.json"


def write_metrics_file(folder: str | Path, content: Mapping[str, Any]) -> Path:
    """Write ``content`` (which holds ``"final"``: {name: value}) as ``folder/metrics.json``."""
    return write_text_atomically(Path(folder) / METRICS_FILE, json.dumps(content, indent=2) + "\n")


def read_final_metrics(folder: str | Path) -> dict[str, float] | None:
    """The ``"final"`` metrics of ``folder/metrics.json``, or None when the run wrote none."""
    path = Path(folder) / METRICS_FILE
    return json.loads(path.read_text())["final"] if path.is_file() else None
