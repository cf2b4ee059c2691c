"""``autocompress dashboard STUDY [-o FILE.html] [--serve [--host H] [--port P]]``."""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Draw a study as one self-contained HTML page (plotly.js inline: it opens offline, nothing is fetched):

  - the Pareto front over any two of accuracy, latency and size (choose the axes), every trial dimmed behind
    it, constraint limits as dashed lines, infeasible trials marked; a 3-D view of all three;
  - hover a point for its trial number, objectives, compression ratio and plan;
  - per-layer heatmaps over the front members: sparsity, weight bits, channel keep-ratio (model order);
  - hypervolume over trials, evaluation cost per trial (coloured by fidelity where trials record one);
  - predicted vs measured latency (with a +/-10 % band) and proxy vs full accuracy, where recorded;
  - a table of the front members with the `autocompress export` command for each.

Without --serve the page is written to FILE.html (default: dashboard.html in the study's results folder, i.e.
beside its SQLite database; the current folder for other storage URLs), through a temporary file renamed into
place, so a failed run leaves no partial page.
With --serve the same page is served on http://127.0.0.1:PORT/ and refreshes itself from the study's
storage while a search runs (it may start before the first trial completes)."""

EPILOG = """\
examples:
  autocompress dashboard studies/quickstart.yaml
  autocompress dashboard studies/quickstart/ -o report.html
  autocompress dashboard studies/quickstart.yaml --serve --port 8050
  autocompress dashboard sqlite:///studies/quickstart/study.db --study-name quickstart"""


def register(subparsers: Any) -> None:
    """Add the ``dashboard`` sub-command to ``autocompress``'s sub-parsers."""
    d = subparsers.add_parser("dashboard", help="HTML report of a study's Pareto front, or a live view of it",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("study", help="study config (YAML), results folder (holding study.db) or storage URL")
    d.add_argument("--study-name", default=None, help="study name inside the storage (default: the only one)")
    d.add_argument("-o", "--output", default=None, metavar="FILE.html",
                   help="where to write the page (default: dashboard.html beside the study's database)")
    d.add_argument("--serve", action="store_true",
                   help="serve the page on a local HTTP server, refreshed while the study runs (Ctrl-C stops)")
    d.add_argument("--host", default=None, metavar="HOST",
                   help="address to listen on with --serve (default 127.0.0.1: this machine only)")
    d.add_argument("--port", type=int, default=None, metavar="P",
                   help="port to listen on with --serve (default 8050; 0 picks a free one)")
    d.add_argument("--refresh", type=float, default=None, metavar="SECONDS",
                   help="with --serve: how often the page checks the study for new trials (default 5)")
    d.set_defaults(func=cmd_dashboard, dashboard_parser=d)


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def cmd_dashboard(args: argparse.Namespace) -> int:
    from .data import dashboard_data
    from .html import render_html, write_atomic
    from .source import open_study, read_study, require_completed, resolve, study_version

    if not args.serve and (args.host is not None or args.port is not None or args.refresh is not None):
        args.dashboard_parser.error("--host, --port and --refresh only apply with --serve")
    if args.refresh is not None and args.refresh <= 0:
        args.dashboard_parser.error(f"--refresh must be a positive number of seconds, got {args.refresh:g}")
    if args.port is not None and not 0 <= args.port <= 65535:
        args.dashboard_parser.error(f"--port must be in 0..65535, got {args.port}")

    ref = resolve(args.study, args.study_name)
    study = open_study(ref)

    cache: dict[str, Any] = {}

    def produce() -> dict[str, Any]:  # the live view's data, computed again only when the study changed
        version = study_version(study)
        if cache.get("version") != version:
            cache["data"] = dashboard_data(read_study(study), target=args.study, study_name=args.study_name,
                                           generated_at=_now())
            cache["version"] = version
        return cache["data"]

    out = None
    if args.output or not args.serve:
        out = Path(args.output) if args.output else ref.default_output
        if out.is_dir():
            out = out / "dashboard.html"

    if not args.serve:
        sd = read_study(study)
        require_completed(sd, shlex.quote(args.study))
        data = dashboard_data(sd, target=args.study, study_name=args.study_name, generated_at=_now())
        write_atomic(render_html(data), out)
        c = data["counts"]
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): study {data['study']!r}, {c['complete']} completed "
              f"trials, {c['failed']} failed, {c['front']} on the Pareto front. It opens in any browser, offline.")
        return 0

    from .server import make_server

    first = produce()  # a study that cannot be read fails here, before listening
    if first["counts"]["complete"] == 0:
        print(f"study {first['study']!r} has no completed trial yet; the page fills in as trials finish.",
              file=sys.stderr)
    elif out is not None:
        write_atomic(render_html(first), out)
        print(f"wrote {out}")
    host = args.host or "127.0.0.1"
    refresh = args.refresh or 5.0
    server = make_server(produce, host=host, port=8050 if args.port is None else args.port, refresh_s=refresh)
    if not _is_loopback(host):
        print(f"warning: listening on {host}: anyone who can reach this machine can read the study", file=sys.stderr)
    print(f"serving study {first['study']!r} at {server.url} (checks for new trials every {refresh:g} s); "
          "Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
