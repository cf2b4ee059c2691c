"""The self-contained page: plotly.js, the drawing code and the study's data inline; nothing is fetched."""

from __future__ import annotations

import html
import json
import os
import re
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from .draw import CSS, DRAW_JS, ERROR_HOOK_JS

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="autocompress dashboard">
<title>autocompress · @@title@@</title>
<style>@@css@@</style>
</head>
<body data-js-errors="0" data-rendered="0">
<script>@@error_hook@@</script>
<header>
  <h1>autocompress · <span id="study-name">@@title@@</span></h1>
  <div id="summary"></div>
  <div id="live-status" hidden></div>
</header>
<pre id="js-errors" hidden></pre>
<main>
<section id="sec-front">
  <h2>Pareto front</h2>
  <div class="controls">
    <label>x axis<select id="front-x"></select></label>
    <label>y axis<select id="front-y"></select></label>
    <span class="note">Blue: the study's Pareto front over all its objectives, feasible only. Grey: dominated trials.
      Red crosses: trials violating a constraint (dashed red lines). Dotted line: the front of the two shown metrics alone.
      Hover a point for its plan.</span>
  </div>
  <div id="front-plot"></div>
  <p class="note" id="front-note" hidden></p>
</section>
<section id="sec-layers">
  <h2>Per-layer decisions of the front members</h2>
  <p class="note">One column per front member (smallest model first), layers in model order: which layers tolerate
    sparsity, low bit-widths and channel pruning. Darker is more aggressive.</p>
  <div id="heatmaps"></div>
  <p class="note" id="heatmap-note" hidden></p>
  <h3>Per-layer sensitivity</h3>
  <p class="note">How far the teacher's outputs move (divergence, log colour scale) when one layer alone takes one
    choice, scored zero-shot when the study started: what the budgeted warm starts and the narrowed space were
    built from.</p>
  <div id="sensitivity"></div>
  <p class="note" id="sensitivity-note" hidden></p>
</section>
<section id="sec-table">
  <h2>Front members</h2>
  <p class="note">Export a member with the command in its row (it writes the compressed model to the folder after -o).</p>
  <p class="note" id="table-note" hidden></p>
  <div class="table-box"><table id="front-table"></table></div>
</section>
<section id="sec-progress">
  <h2>Search progress</h2>
  <div class="grid2">
    <div><div id="hv-plot"></div><p class="note" id="hv-note" hidden></p></div>
    <div><div id="cost-plot"></div><p class="note" id="cost-note" hidden></p></div>
  </div>
</section>
<section id="sec-calibration">
  <h2>Predictions vs measurements</h2>
  <div class="grid2">
    <div><div id="latency-cal-plot"></div><p class="note" id="latency-cal-note" hidden></p></div>
    <div><div id="accuracy-cal-plot"></div><p class="note" id="accuracy-cal-note" hidden></p></div>
  </div>
</section>
<section id="sec-3d">
  <h2>Accuracy × latency × size</h2>
  <p class="note">All three objectives at once; drag to turn it. Drawn once scrolled into view.</p>
  <div id="front3d-plot"></div>
  <p class="note" id="front3d-note" hidden></p>
</section>
</main>
<footer><span id="generated"></span> Made by autocompress; works offline.</footer>
<script id="dashboard-data" type="application/json">@@data@@</script>
<script id="dashboard-live" type="application/json">@@live@@</script>
<script>@@plotly@@</script>
<script>@@draw@@</script>
</body>
</html>
"""


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """plotly.js as shipped with the installed plotly package (no network)."""
    from plotly.offline import get_plotlyjs

    return _script_safe(get_plotlyjs())


def _script_safe(text: str) -> str:
    # Inside <script>, "</script" (any case) would end the element early.
    return re.sub(r"</(script)", r"<\\/\1", text, flags=re.IGNORECASE)


def to_json(data: Any) -> str:
    """JSON safe to embed in a <script> element (no NaN; '<', '>', '&' escaped as \\u00XX)."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def render_html(data: dict[str, Any], *, live: dict[str, Any] | None = None) -> str:
    """The page for ``data`` (from :func:`dashboard_data`); ``live`` = {"endpoint", "interval_ms"} makes it poll."""
    parts = {"title": html.escape(str(data.get("study", ""))), "css": CSS, "error_hook": _script_safe(ERROR_HOOK_JS),
             "data": to_json(data), "live": to_json(live), "plotly": plotly_js(), "draw": _script_safe(DRAW_JS)}
    # One pass: text put in is never scanned for placeholders again.
    return re.sub(r"@@(\w+)@@", lambda m: parts[m.group(1)], TEMPLATE)


def _file_mode(path: Path) -> int:
    """The mode a new file gets (0o666 less the umask), or that of the file being replaced."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_atomic(text: str, path: Path) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, renamed into place when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, _file_mode(path))  # mkstemp makes it private; a report is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
