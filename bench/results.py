"""Writing a benchmark's rows into bench/RESULTS.md, with the machine, versions and command.

Each benchmark owns one section, delimited by HTML comments, replaced when it runs again.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu}, {cores} cores, {memory:.0f} GiB RAM, load average {load} at start"


def versions(*packages: str) -> str:
    found = [f"python {platform.python_version()}"]
    found += [f"{p} {metadata.version(p)}" for p in packages]
    return ", ".join(found)


def write_section(
    name: str, title: str, body: str, packages: tuple[str, ...], start_load: str, path: Path = RESULTS
) -> None:
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    section = "\n".join(
        [
            f"<!-- {name}:begin -->",
            f"## {title}",
            "",
            f"- command: `{command}`",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- machine: {start_load}",
            f"- versions: {versions(*packages)}",
            "",
            body.rstrip(),
            f"<!-- {name}:end -->",
        ]
    )
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
    print(section)
