"""Start-up time of `df`: `df --help` against `python -c "import typer, rich"`, and `df jobs show ID`
on SQLite, measured in one run (median of N, wall clock, each a fresh interpreter).

    PYTHONPATH=. python benchmarks/cli_startup.py [--runs 9]

Aims (issue #11): `df --help` within 1.5x of the bare typer+rich import; `df jobs show` under 0.35 s.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def timed(cmd: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds (user + system) of the child. CPU time moves
    less than wall time when other work shares the two cores."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=9)
    runs = parser.parse_args().runs
    py = sys.executable
    with tempfile.TemporaryDirectory() as data:
        env = {**os.environ, "DF_DATA_DIR": data, "DF_FAKE_RUNNER": "1"}
        keep = ("DF_DATA_DIR", "DF_FAKE_RUNNER")
        env = {k: v for k, v in env.items() if not k.startswith("DF_") or k in keep}
        # As installed: modules are compiled once and their bytecode cached (the generate below
        # writes the cache; a sandbox's PYTHONDONTWRITEBYTECODE would make every run compile).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        made = subprocess.run([py, "-m", "dreamforge.cli.main", "generate", "bench", "--width", "64",
                               "--height", "64"], env=env, capture_output=True, text=True, check=True)
        job_id = made.stdout.strip()
        bare = timed([py, "-c", "pass"], env, runs)
        base = timed([py, "-c", "import typer, rich"], env, runs)
        help_ = timed([py, "-m", "dreamforge.cli.main", "--help"], env, runs)
        show = timed([py, "-m", "dreamforge.cli.main", "jobs", "show", job_id], env, runs)
    print(f"{'':31} {'wall':>7} {'cpu':>7}")
    print(f"python -c pass                  {bare[0]:6.3f}s {bare[1]:6.3f}s")
    print(f'python -c "import typer, rich"  {base[0]:6.3f}s {base[1]:6.3f}s')
    print(f"df --help                       {help_[0]:6.3f}s {help_[1]:6.3f}s   ratio wall "
          f"{help_[0] / base[0]:4.2f}, cpu {help_[1] / base[1]:4.2f} (aim <= 1.5)")
    print(f"df jobs show ID (SQLite)        {show[0]:6.3f}s {show[1]:6.3f}s   (aim < 0.35)")


if __name__ == "__main__":
    main()
