"""The web page with 1,000 jobs in the store, in the system's headless Chromium: first contentful
paint, the gallery's first page listed, the first thumbnail and every thumbnail in view shown; how
many thumbnails were fetched (lazy: the ones near the viewport, not 1,000); page weight.

A `df serve` (SQLite, fake runner) gets 1,000 real jobs (64x64, 1 step) through POST /v1/jobs and
runs them, so every job has a stored image and a thumbnail. Each run is a fresh browser load.

    PYTHONPATH=. python benchmarks/web_page.py [--jobs 1000] [--runs 5]
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from dreamforge.server.web import STATIC  # noqa: E402
from tests.servers import free_port  # noqa: E402

SETTLED = """
const imgs = [...document.querySelectorAll('#gallery img')];
const near = imgs.filter(i => i.getBoundingClientRect().top < innerHeight + 200);
const thumbs = performance.getEntriesByName('df:thumb');
const done = near.length > 0 && near.every(i => i.complete && i.naturalWidth > 0);
const fcp = performance.getEntriesByName('first-contentful-paint')[0];
const listed = performance.getEntriesByName('df:listed')[0];
return done && fcp && listed ? {
  fcp: fcp.startTime, listed: listed.startTime, first_thumb: thumbs[0].startTime,
  thumbs_in_view: Math.max(...thumbs.map(t => t.startTime)), in_view: near.length,
  cards: document.querySelectorAll('#gallery li').length,
  fetched: performance.getEntriesByType('resource').filter(r => r.name.includes('thumb=')).length,
} : null;
"""


def seed_jobs(url: str, n: int) -> float:
    body = {"prompt": "benchmark", "width": 64, "height": 64, "steps": 1}
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: client.post("/v1/jobs", json={**body, "seed": i}).raise_for_status(), range(n)))
        while client.get("/v1/jobs", params={"status": ["queued", "running"], "limit": 1}).json()["jobs"]:
            time.sleep(0.5)
    return time.perf_counter() - t0


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    files = {n: (STATIC / n).read_bytes() for n in ("index.html", "app.js", "app.css")}
    raw = sum(len(b) for b in files.values())
    packed = sum(len(gzip.compress(b, 9)) for b in files.values())
    print(f"page weight: {raw / 1024:.1f} KB (HTML+JS+CSS), {packed / 1024:.1f} KB gzipped "
          + ", ".join(f"{n} {len(b) / 1024:.1f} KB" for n, b in files.items()))

    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DF_")}
        env.update(DF_DATA_DIR=f"{tmp}/data", DF_FAKE_RUNNER="1", DF_FAKE_STEP_DELAY_S="0",
                   PYTHONPATH=str(ROOT))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(f"{tmp}/serve.log", "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "dreamforge.cli.main", "serve", "--port", str(port)],
                                    env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            print(f"seeded {args.jobs} jobs (submitted and run) in {seed_jobs(url, args.jobs):.1f} s")
            driver = browser()
            try:
                from selenium.webdriver.support.ui import WebDriverWait

                rows = []
                for _ in range(args.runs):
                    driver.get("about:blank")
                    driver.get(url + "/")
                    rows.append(WebDriverWait(driver, 30, 0.02).until(lambda d: d.execute_script(SETTLED)))
                    time.sleep(0.5)
            finally:
                driver.quit()
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"{args.runs} loads, medians (ms from navigation start):")
    for key in ("fcp", "listed", "first_thumb", "thumbs_in_view"):
        values = [r[key] for r in rows]
        print(f"  {key:<15} {statistics.median(values):7.0f}   (min {min(values):.0f}, max {max(values):.0f})")
    last = rows[-1]
    print(f"  cards listed: {last['cards']}, thumbnails in view: {last['in_view']}, "
          f"thumbnails fetched: {last['fetched']} of {args.jobs} jobs")


if __name__ == "__main__":
    main()
