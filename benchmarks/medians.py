"""Medians of interleaved before/after rounds: reads logs in which each round starts with a line
``== round N TREE ...`` followed by the tails of queue_overhead.py (its data lines) and
api_post.py (``tail -4``: its df and bare lines, with or without ``--watchers``), and prints, per
figure, backend and tree, the median and range over the rounds.

    python benchmarks/medians.py docs/measurements/overhead-round4-cpu.log
"""

from __future__ import annotations

import argparse
import collections
import re
import statistics

BACKENDS = ("sqlite", "postgres_redis")
# api_post.py's df line ends: CPU/POST "x.xx ms", df/bare rate, bare/df CPU, "yes"/"NO".
POST_TAIL = re.compile(r"([\d.]+) ms\s+([\d.]+)\s+([\d.]+)\s+(?:yes|NO)")


def medians(lines: list[str]) -> dict[tuple[str, str, str], list[float]]:
    figures: dict[tuple[str, str, str], list[float]] = collections.defaultdict(list)
    tree = None
    for line in lines:
        round_start = re.match(r"== round \d+ (\S+)", line)
        if round_start:
            tree = round_start.group(1)
            continue
        parts = line.split()
        if tree is None or len(parts) < 8 or parts[0] not in BACKENDS:
            continue
        if parts[1] == "df":
            match = POST_TAIL.search(line)
            if match:
                kind = "watched POST" if "SSE frames" in line else "POST"
                figures[(parts[0], f"{kind}/s df/bare", tree)].append(float(match.group(2)))
                figures[(parts[0], f"{kind} server CPU ms", tree)].append(float(match.group(1)))
        elif parts[1] != "bare":  # queue_overhead.py: p50 ms p99 ms jobs/s-1 jobs/s-10 ... CPU/job-1 ms CPU/job-10 ms
            figures[(parts[0], "jobs/s 1 step", tree)].append(float(parts[5]))
            figures[(parts[0], "jobs/s 10 steps", tree)].append(float(parts[6]))
            figures[(parts[0], "worker CPU/job 1 step ms", tree)].append(float(parts[-4]))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+")
    args = parser.parse_args()
    lines = [line for path in args.logs for line in open(path, encoding="utf-8")]
    for (backend, figure, tree), values in sorted(medians(lines).items()):
        print(f"{backend:<15} {figure:<26} {tree:<6} n={len(values)}  median {statistics.median(values):8.3f}"
              f"  range {min(values):.3f}-{max(values):.3f}")


if __name__ == "__main__":
    main()
