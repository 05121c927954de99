"""Bad numbers against every fewstep CLI: how many are refused at the boundary, and how.

    uv run python benchmarks/reliability_probes.py

Walks every installed fewstep console script (the same discovery as tests/reliability), gives each
numeric option of each command the probes 0, -1, nan, inf, -inf, 1e308, 1e15 and abc, and runs the
command in-process. A probe outside the option's declared range must end with exit code 2, the
option named and no traceback; a probe inside it is listed as documented (seed 0, sentinels).
Writes docs/benchmarks/reliability.md. Nothing trains: a refused value stops the command while its
arguments are parsed, so the whole walk takes seconds.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("COLUMNS", "300")

from typer.testing import CliRunner  # noqa: E402

from tests.reliability.harness import PROBES, accepted, numeric_options, package_clis  # noqa: E402


def main() -> None:
    t0 = time.perf_counter()
    apps = package_clis()
    outcomes: Counter = Counter()
    documented, failures = [], []
    options = numeric_options()
    for cli, command, option, parser in options:
        for probe in PROBES:
            if accepted(parser, probe):
                documented.append(f"`{cli} {command} {option} {probe}`")
                continue
            r = CliRunner().invoke(apps[cli], [command, option, probe], env={"COLUMNS": "300"})
            clean = r.exit_code == 2 and f"Invalid value for '{option}'" in r.output and "Traceback" not in r.output
            outcomes["refused, option named" if clean else "NOT clean"] += 1
            if not clean:
                failures.append(f"`{cli} {command} {option} {probe}`: exit {r.exit_code}")
    seconds = time.perf_counter() - t0
    per_cli = Counter(cli for cli, *_ in options)
    lines = [
        "# Reliability: bad numbers at every CLI's boundary",
        "",
        "`uv run python benchmarks/reliability_probes.py` (in-process, CPU). Every numeric option of every "
        "installed fewstep CLI gets the probes " + ", ".join(f"`{p}`" for p in PROBES) + ". The kill, lock, "
        "disk and signal scenarios are tests, not figures: `uv run pytest tests/reliability` (see "
        "[reliability.md](../reliability.md)).",
        "",
        "| CLI | numeric options |",
        "|---|---|",
        *[f"| `{cli}` | {n} |" for cli, n in sorted(per_cli.items())],
        "",
        "| outcome | probes |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(outcomes.items())],
        f"| accepted: inside the option's documented range | {len(documented)} |",
        "",
        f"{len(options)} options, {sum(outcomes.values())} out-of-range probes, {len(failures)} not cleanly refused; "
        f"walk took {seconds:.1f} s.",
        "",
        "Accepted probes (each documented by its option's help): " + ", ".join(documented) + ".",
    ]
    if failures:
        lines += ["", "Not cleanly refused:", *[f"- {f}" for f in failures]]
    out = ROOT / "docs" / "benchmarks" / "reliability.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
