"""What every benchmark shares: naming the machine and adding a row to BENCHMARKS.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def machine() -> str:
    """One line naming the machine: GPU (if any), CPU model and core count."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{gpu}; {cpu}, {cores} cores"


def record(section: str, row: dict[str, object], path: Path = BENCHMARKS) -> None:
    """Append ``row`` to the markdown table under the heading ``## {section}``.

    The heading and the table's header are created from the row's keys when absent.
    """
    row = {"date": dt.date.today().isoformat(), "machine": machine(), **row}
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.rstrip("\n").split("\n")
    heading = f"## {section}"
    line = "| " + " | ".join(str(v) for v in row.values()) + " |"
    if heading not in lines:
        header = "| " + " | ".join(row) + " |"
        rule = "|" + "---|" * len(row)
        lines += ["", heading, "", header, rule, line]
    else:
        i = lines.index(heading) + 1
        while i < len(lines) and not lines[i].startswith("|"):
            i += 1
        while i < len(lines) and lines[i].startswith("|"):
            i += 1
        lines.insert(i, line)
    path.write_text("\n".join(lines) + "\n")
