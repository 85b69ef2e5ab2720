"""Start-up time of `df`: `df --help` against `python -c "import typer, rich"`, and `df jobs show ID`
on SQLite, measured in one run (median of N, wall clock, each a fresh interpreter).

    PYTHONPATH=. python benchmarks/cli_startup.py [--runs 9]

Aims (issue #11): `df --help` within 1.5x of the bare typer+rich import; `df jobs show` under 0.35 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def timed(cmd: list[str], env: dict[str, str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=9)
    runs = parser.parse_args().runs
    py = sys.executable
    with tempfile.TemporaryDirectory() as data:
        env = {**os.environ, "DF_DATA_DIR": data, "DF_FAKE_RUNNER": "1"}
        keep = ("DF_DATA_DIR", "DF_FAKE_RUNNER")
        env = {k: v for k, v in env.items() if not k.startswith("DF_") or k in keep}
        made = subprocess.run([py, "-m", "dreamforge.cli.main", "generate", "bench", "--width", "64",
                               "--height", "64"], env=env, capture_output=True, text=True, check=True)
        job_id = made.stdout.strip()
        bare = timed([py, "-c", "pass"], env, runs)
        base = timed([py, "-c", "import typer, rich"], env, runs)
        help_ = timed([py, "-m", "dreamforge.cli.main", "--help"], env, runs)
        show = timed([py, "-m", "dreamforge.cli.main", "jobs", "show", job_id], env, runs)
    print(f"python -c pass                 {bare:6.3f} s")
    print(f'python -c "import typer, rich" {base:6.3f} s')
    print(f"df --help                      {help_:6.3f} s   ratio {help_ / base:4.2f} (aim <= 1.5)")
    print(f"df jobs show ID (SQLite)       {show:6.3f} s   (aim < 0.35)")


if __name__ == "__main__":
    main()
