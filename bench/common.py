"""What every benchmark shares: naming the machine and adding a row to BENCHMARKS.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
WHISPER = Path(__file__).resolve().parents[2] / "shared" / "whisper"  # the real checkpoints, beside the project


def flags(*pairs: tuple[str, object]) -> str:
    """A row's command-line flags: `` FLAG VALUE`` for each pair whose value is set."""
    return "".join(f" {flag} {value}" for flag, value in pairs if value)


def shown_whisper(whisper: str) -> str:
    """``--whisper`` as a row's command gives it: nothing for the default (``WHISPER/tiny.en.pt``),
    ``../shared/whisper/NAME`` for a checkpoint there, else the value itself."""
    if whisper == str(WHISPER / "tiny.en.pt"):
        return ""
    return f"../shared/whisper/{Path(whisper).name}" if Path(whisper).parent == WHISPER else whisper


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

    The heading and the table's header are created from the row's keys when absent; a row whose keys differ
    from the section's last table (a benchmark that gained a column) starts a new table under it.
    """
    row = {"date": dt.date.today().isoformat(), "machine": machine(), **row}
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.rstrip("\n").split("\n")
    heading = f"## {section}"
    header = "| " + " | ".join(row) + " |"
    table = [header, "|" + "---|" * len(row)]
    line = "| " + " | ".join(str(v) for v in row.values()) + " |"
    if heading not in lines:
        lines += ["", heading, "", *table, line]
    else:
        i = lines.index(heading) + 1
        end = next((j for j in range(i, len(lines)) if lines[j].startswith("## ")), len(lines))
        tables = [j for j in range(i, end) if lines[j].startswith("|") and not lines[j - 1].startswith("|")]
        if not tables or lines[tables[-1]] != header:
            last = max((j for j in range(i, end) if lines[j].strip()), default=i - 1)
            lines[last + 1:last + 1] = ["", *table, line]
        else:
            j = tables[-1]
            while j < end and lines[j].startswith("|"):
                j += 1
            lines.insert(j, line)
    path.write_text("\n".join(lines) + "\n")
