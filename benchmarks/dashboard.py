"""Dashboard at scale: a synthetic study of N trials -> HTML size, build time, time to render in headless Chromium.

    .venv/bin/python benchmarks/dashboard.py                      # 10 000 trials, in-memory storage
    .venv/bin/python benchmarks/dashboard.py --storage sqlite --no-browser   # reading 10 000 trials from SQLite
    .venv/bin/python benchmarks/dashboard.py --trials 1000 --runs 5 --keep /tmp/dashboard.html

The study comes from :func:`autocompress.dashboard.synthetic.make_synthetic_study` (LeNet-5-shaped plans with
every layer decided, metrics derived from the plan, ~2 % failed trials, constraint min_accuracy 0.95, fidelity,
latency predictions and proxy accuracy recorded). The page is loaded ``--runs`` times in each of three ways: a
1400x1000 window with software WebGL (what headless Chromium offers without a GPU; the 3-D view, below the fold,
is not drawn until scrolled to), a 1400x6000 window (every figure in view, 3-D included), and WebGL disabled (SVG
everywhere, no 3-D view).
Loaded with "#timing", the page logs milestones to the console; their timestamps in Chromium's log give, from the
moment Chromium is launched: the page's first script runs (HTML parsed up to it), the drawing code starts
(plotly.js parsed), the front plot is drawn (first screen), the last figure is drawn. Medians are printed, with a
blank page's time to its first script as the browser's own start-up cost.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import optuna

from autocompress.dashboard import dashboard_data, read_study, render_html, write_atomic
from autocompress.dashboard.html import plotly_js, to_json
from autocompress.dashboard.synthetic import make_synthetic_study

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0", "--dump-dom"]
MODES = {"1400x1000 window, software WebGL": ["--window-size=1400,1000"],
         "1400x6000 window (all in view, 3-D too)": ["--window-size=1400,6000"],
         "1400x1000 window, WebGL disabled": ["--window-size=1400,1000", "--disable-webgl"]}
MARK = re.compile(r"^\[\d+:\d+:(\d{4})/(\d{6}\.\d+):INFO:CONSOLE[^\]]*\] \"autocompress-dashboard (\w+)\"")


class _Body(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "body" and self.attrs is None:
            self.attrs = {k: v or "" for k, v in attrs}


def load(browser: str, url: str, extra: list[str]) -> tuple[dict[str, str], dict[str, float]]:
    """Body attributes after the page ran, and seconds from launching Chromium to each milestone the page logged."""
    profile = tempfile.mkdtemp(prefix="dash-bench-")
    launched = datetime.now()
    try:
        proc = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *extra, url + "#timing"],
                              capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    marks = {}
    for line in proc.stderr.splitlines():
        m = MARK.match(line)
        if m:  # Chromium logs local time as MMDD/HHMMSS.micro
            at = datetime.strptime(f"{launched.year}{m.group(1)}{m.group(2)}", "%Y%m%d%H%M%S.%f")
            marks[m.group(3)] = (at - launched).total_seconds()
    p = _Body()
    p.feed(proc.stdout)
    return p.attrs or {}, marks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--storage", choices=("memory", "sqlite"), default="memory")
    ap.add_argument("--runs", type=int, default=3, help="page loads per browser mode (median reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="also keep the page here")
    ap.add_argument("--no-browser", action="store_true", help="only build the page (no Chromium timing)")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; Python {platform.python_version()}; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    work = Path(tempfile.mkdtemp(prefix="dash-bench-"))
    try:
        storage = optuna.storages.InMemoryStorage() if args.storage == "memory" else f"sqlite:///{work / 'study.db'}"
        t0 = time.perf_counter()
        study = make_synthetic_study(storage, args.trials, seed=args.seed)
        t_create = time.perf_counter() - t0
        if args.storage == "sqlite":  # read back as the CLI does: a fresh connection to the file
            study = optuna.load_study(study_name=study.study_name, storage=storage)
        t0 = time.perf_counter()
        sd = read_study(study)
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        read_study(study)
        t_reread = time.perf_counter() - t0
        t0 = time.perf_counter()
        data = dashboard_data(sd, target="studies/synthetic.yaml", generated_at="benchmark")
        t_data = time.perf_counter() - t0
        t0 = time.perf_counter()
        page = render_html(data)
        out = work / "dashboard.html"
        write_atomic(page, out)
        t_html = time.perf_counter() - t0
        size = out.stat().st_size
        c = data["counts"]
        print(f"study: {args.trials} trials ({c['complete']} completed, {c['failed']} failed, {c['feasible']} feasible, "
              f"{c['front']} on the front), {args.storage} storage, created in {t_create:.1f} s")
        print(f"read study {t_read:.2f} s (again: {t_reread:.2f} s), figure data {t_data:.2f} s, "
              f"page {t_html:.2f} s; HTML {size / 1e6:.2f} MB (plotly.js {_plotly_mb():.2f} MB of it, "
              f"study data {len(to_json(data).encode()) / 1e6:.2f} MB)")
        if args.keep:
            shutil.copyfile(out, args.keep)
        if args.no_browser:
            return 0
        if not browser:
            print("chromium not found: no render timing (make system-deps installs it)")
            return 1
        blank = work / "blank.html"
        blank.write_text('<!DOCTYPE html><html><body><script>console.info("autocompress-dashboard start")</script>'
                         "</body></html>")
        blank_start = statistics.median(load(browser, blank.as_uri(), MODES[next(iter(MODES))])[1].get("start", math.nan)
                                        for _ in range(args.runs))
        print(f"blank page: first script runs {blank_start:.2f} s after launching Chromium (browser start-up)")
        ok = True
        for mode, extra in MODES.items():
            runs = [load(browser, out.as_uri(), extra) for _ in range(args.runs)]
            for attrs, _ in runs:
                good = (attrs.get("data-rendered") == "1" and attrs.get("data-js-errors") == "0"
                        and attrs.get("data-front-points") == str(c["complete"])
                        and attrs.get("data-heatmap-columns") == str(c["front"]))
                if "6000" in mode and attrs.get("data-webgl") == "1":
                    good &= attrs.get("data-3d-points") == str(c["complete"])
                ok &= good
                if not good:
                    print(f"  bad render ({mode}): {attrs}")

            def med(key: str, runs=runs) -> float:
                return statistics.median(m.get(key, math.nan) for _, m in runs)

            print(f"{mode} (s after launching Chromium, median of {len(runs)}): first script "
                  f"{med('start'):.2f}, plotly.js parsed {med('script'):.2f}, front drawn {med('first'):.2f}, "
                  f"all figures drawn {med('rendered'):.2f}; page alone (first script -> all drawn) "
                  f"{med('rendered') - med('start'):.2f}, first screen {med('first') - med('start'):.2f}")
        print(f"load average at end {os.getloadavg()[0]:.1f}")
        print("all renders correct (points = completed trials, heatmap columns = front members, no JS error)"
              if ok else "SOME RENDERS WERE WRONG")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _plotly_mb() -> float:
    return len(plotly_js().encode()) / 1e6


if __name__ == "__main__":
    sys.exit(main())
