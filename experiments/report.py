"""Output shared by the experiment modules: a CSV, a printed table, the machine's name."""

from __future__ import annotations

import csv
import os
import platform
from typing import Sequence


def quiet_library_logs() -> None:
    """Shows absl logs (Orbax logs every checkpoint step at INFO) from WARNING up, unless --verbosity was given."""
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def device_name() -> str:
    """The first JAX device in words, e.g. "cpu (x86_64, 2 cores)" or "NVIDIA H100 80GB HBM3"."""
    import jax

    device = jax.local_devices()[0]
    if device.platform == "cpu":
        return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
    return device.device_kind


def write_csv(path: str, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """rows (dicts with at least ``columns``) to path; None is written as an empty cell."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{k: "" if row.get(k) is None else row[k] for k in columns} for row in rows])


def _cell(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A Markdown table of ``columns`` (floats to 4 significant digits, None as "-")."""
    lines = [[str(c) for c in columns]] + [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]

    def row(cells):
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([row(lines[0]), rule] + [row(cells) for cells in lines[1:]])
