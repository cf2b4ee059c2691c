"""The Pareto dashboard: figure data (pure functions), the page in headless Chromium, the CLI and the live server."""

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from html.parser import HTMLParser

import optuna
import pandas as pd
import pytest
from conftest import ROOT, write_study

from autocompress.cli import main
from autocompress.dashboard.data import (
    accuracy_calibration,
    checkpoints,
    constraint_thresholds,
    cost_series,
    dashboard_data,
    export_command,
    hypervolume_series,
    latency_calibration,
    layer_heatmaps,
    pareto_2d,
    sig,
    spearman,
    trial_columns,
)
from autocompress.dashboard.html import plotly_js, render_html, to_json, write_atomic
from autocompress.dashboard.server import make_server
from autocompress.dashboard.source import read_study, study_version
from autocompress.dashboard.synthetic import make_synthetic_study
from autocompress.front import COLUMNS, Front
from autocompress.plan import CompressionPlan, LayerPlan

optuna.logging.set_verbosity(optuna.logging.WARNING)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make system-deps` "
                                                              "installs Debian's chromium)")
DIRS = {"accuracy": "maximize", "latency_ms": "minimize", "size_bytes": "minimize"}


# --- helpers -------------------------------------------------------------------------------------------------------

def _trials(rows):
    """A Front.trials-like frame from (trial, accuracy, latency_ms, size_bytes, feasible, on_front) tuples."""
    df = pd.DataFrame(rows, columns=["trial", "accuracy", "latency_ms", "size_bytes", "feasible", "on_front"])
    for col in COLUMNS:
        if col not in df:
            df[col] = "" if col == "plan_summary" else None
    return df


@pytest.fixture(scope="module")
def synthetic_db(tmp_path_factory):
    """A 60-trial synthetic study with fidelity, latency predictions and proxy accuracy, in SQLite."""
    path = tmp_path_factory.mktemp("dash") / "study.db"
    make_synthetic_study(f"sqlite:///{path}", 60, seed=3, failed_share=0.05)
    return path


@pytest.fixture(scope="module")
def synthetic_plain_db(tmp_path_factory):
    """A 40-trial synthetic study recording none of the optional attributes (no fidelity, no predictions)."""
    path = tmp_path_factory.mktemp("dash_plain") / "study.db"
    make_synthetic_study(f"sqlite:///{path}", 40, seed=4, extras=False, failed_share=0.0)
    return path


def _load(path):
    name = optuna.get_all_study_summaries(f"sqlite:///{path}")[0].study_name
    return optuna.load_study(study_name=name, storage=f"sqlite:///{path}")


class _BodyAttrs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.body, self.errors, self._in_errors = None, "", False

    def handle_starttag(self, tag, attrs):
        if tag == "body" and self.body is None:
            self.body = dict(attrs)
        self._in_errors = tag == "pre" and ("id", "js-errors") in attrs

    def handle_data(self, data):
        if self._in_errors:
            self.errors += data

    def handle_endtag(self, tag):
        self._in_errors = False


def chromium(url, *, screenshot=None, window=(1400, 1000), budget_ms=5000, extra=()):
    """Load ``url`` in headless Chromium; returns (body attributes after JS ran, #js-errors text, stderr, DOM)."""
    profile = tempfile.mkdtemp(prefix="dash-chromium-")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--enable-logging=stderr", "--v=0",
           f"--window-size={window[0]},{window[1]}", *extra, "--dump-dom"]
    if screenshot:
        cmd.append(f"--screenshot={screenshot}")
    try:
        proc = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=90)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    parser = _BodyAttrs()
    parser.feed(proc.stdout)
    assert parser.body is not None, f"no DOM dumped (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
    return parser.body, parser.errors, proc.stderr, proc.stdout


def console_errors(stderr):
    return [line for line in stderr.splitlines() if "CONSOLE" in line and "Uncaught" in line]


def assert_clean(body, errors, stderr):
    assert body.get("data-js-errors") == "0", errors
    assert not console_errors(stderr)
    assert body.get("data-rendered") == "1", "the page did not finish drawing"


# --- pure figure data --------------------------------------------------------------------------------------------------

def test_sig_rounds_and_drops_non_finite():
    assert sig(0.123456789) == 0.123457
    assert sig(123456789) == 123457000.0
    assert sig(float("nan")) is None and sig(None) is None and sig("x") is None and sig(float("inf")) is None


def test_pareto_2d_respects_directions_and_feasibility():
    t = _trials([
        (0, 0.90, 1.0, 100, True, False),
        (1, 0.95, 2.0, 100, True, False),   # better accuracy, slower: on the accuracy/latency front
        (2, 0.80, 3.0, 100, True, False),   # dominated by 0 and 1
        (3, 0.99, 0.5, 100, False, False),  # would dominate all, but infeasible
        (4, 0.95, 2.0, 100, True, False),   # duplicate of 1: dropped
        (5, 0.85, 0.8, 100, True, False),   # fastest feasible
    ])
    assert pareto_2d(t, "latency_ms", "accuracy", DIRS) == [5, 0, 1]
    # The same points with accuracy on x: sorted by accuracy ascending.
    assert pareto_2d(t, "accuracy", "latency_ms", DIRS) == [5, 0, 1]
    # Maximising latency instead flips which points survive.
    assert pareto_2d(t, "latency_ms", "accuracy", {**DIRS, "latency_ms": "maximize"}) == [1, 2]
    assert pareto_2d(t[t["trial"] == 3], "latency_ms", "accuracy", DIRS) == []


def test_constraint_thresholds_recovered_from_stored_values():
    trials = _trials([(0, 0.97, 2.0, 1000, True, True), (1, 0.93, 1.0, 3000, False, False)])
    attrs = pd.DataFrame({"trial": [0, 1], "constraints": [
        {"min_accuracy": 0.95 - 0.97, "max_latency_ms": 2.0 - 1.5, "max_size_bytes": 1000.0 - 2500, "other": 1.0},
        {"min_accuracy": 0.95 - 0.93, "max_latency_ms": 1.0 - 1.5, "max_size_bytes": 3000.0 - 2500},
    ]})
    got = {c["name"]: c for c in constraint_thresholds(attrs, trials)}
    assert set(got) == {"min_accuracy", "max_latency_ms", "max_size_bytes"}  # "other" has no metric to draw on
    assert got["min_accuracy"]["value"] == pytest.approx(0.95) and got["min_accuracy"]["bound"] == "min"
    assert got["max_latency_ms"]["value"] == pytest.approx(1.5) and got["max_latency_ms"]["metric"] == "latency_ms"
    assert got["max_size_bytes"]["value"] == pytest.approx(2500)
    assert constraint_thresholds(attrs.assign(constraints=[{}, {}]), trials) == []


def test_layer_heatmaps_model_order_defaults_and_columns():
    front = pd.DataFrame({"trial": [7, 3]})
    plans = {7: CompressionPlan(layers={"fc": LayerPlan(sparsity=0.5, weight_bits=4),
                                        "extra": LayerPlan(channel_keep=0.25)}),
             3: CompressionPlan(layers={"conv": LayerPlan(channel_keep=0.5)})}
    layers = [{"name": "conv", "type": "Conv2d"}, {"name": "fc", "type": "Linear"}]
    h = layer_heatmaps(front, plans, layers)
    assert h["layers"] == ["conv", "fc", "extra"] and h["layer_types"] == ["Conv2d", "Linear", ""]
    assert h["members"] == [7, 3]
    assert h["sparsity"] == [[0.0, 0.0], [0.5, 0.0], [0.0, 0.0]]
    assert h["weight_bits"] == [[32, 32], [4, 32], [32, 32]]
    assert h["channel_keep"] == [[1.0, 0.5], [1.0, 1.0], [0.25, 1.0]]
    assert all(len(row) == 2 for row in h["sparsity"])


def test_hypervolume_series_ends_at_front_hypervolume_and_never_drops(synthetic_db):
    front = Front.from_study(_load(synthetic_db))
    s = hypervolume_series(front.trials, front.objectives, front.teacher)
    assert s["trial"] == sorted(front.trials["trial"]) and not s["sampled"]
    assert s["hypervolume"][-1] == pytest.approx(front.hypervolume, rel=1e-6)
    assert all(b >= a - 1e-12 for a, b in zip(s["hypervolume"], s["hypervolume"][1:], strict=False))
    assert s["hypervolume"][-1] > 0
    sampled = hypervolume_series(front.trials, front.objectives, front.teacher, max_points=10)
    assert sampled["sampled"] and len(sampled["trial"]) == 10
    assert sampled["trial"][-1] == s["trial"][-1] and sampled["hypervolume"][-1] == s["hypervolume"][-1]
    no_teacher = hypervolume_series(front.trials, front.objectives, {})
    assert no_teacher["trial"] == [] and "teacher" in no_teacher["note"]


def test_checkpoints():
    assert checkpoints(0, 5) == [] and checkpoints(3, 5) == [1, 2, 3]
    marks = checkpoints(1000, 7)
    assert marks[0] == 1 and marks[-1] == 1000 and len(marks) == 7


def test_optional_panels_only_where_recorded():
    attrs = pd.DataFrame({"trial": [0, 1, 2, 3], "state": ["COMPLETE"] * 3 + ["FAIL"], "cost_s": [1.0, 2.0, 3.0, 0.5],
                          "constraints": [{}] * 4,
                          "latency_predicted_ms": [1.0, 1.0, None, None], "latency_measured_ms": [1.05, 1.5, 2.0, None],
                          "proxy_accuracy": [0.8, 0.7, 0.9, None], "full_accuracy": [0.85, 0.8, 0.95, None],
                          "fidelity": [0.25, None, 1.0, None]})
    lat = latency_calibration(attrs)
    assert lat["trial"] == [0, 1] and lat["within_band"] == 0.5  # 1.0 vs 1.05 inside +-10 %, 1.0 vs 1.5 outside
    acc = accuracy_calibration(attrs)
    assert acc["n"] == 3 and acc["spearman"] == pytest.approx(1.0)
    cost = cost_series(attrs)
    assert cost["fidelity"] == [0.25, None, 1.0, None] and cost["state"][-1] == "FAIL"
    bare = attrs[["trial", "state", "cost_s", "constraints"]]
    assert latency_calibration(bare) is None and accuracy_calibration(bare) is None
    assert cost_series(bare)["fidelity"] is None
    assert spearman([1, 2], [3, 4]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


def test_export_command_quotes_the_target():
    assert export_command("studies/q.yaml", 12) == "autocompress export studies/q.yaml --trial 12 -o exported/trial-12"
    cmd = export_command("my studies/q.yaml", 3, "a b")
    assert cmd == "autocompress export 'my studies/q.yaml' --study-name 'a b' --trial 3 -o exported/trial-3"


def test_export_command_is_accepted_by_the_export_sub_command():
    from autocompress.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if "export" not in commands:
        pytest.skip("this build has no `autocompress export` sub-command")
    args = parser.parse_args(shlex.split(export_command("my studies/q.yaml", 3, "a b"))[1:])
    assert (args.command, args.study, args.trial, args.study_name, args.output) == \
        ("export", "my studies/q.yaml", 3, "a b", "exported/trial-3")


def test_dashboard_data_is_consistent_and_strict_json(synthetic_db):
    sd = read_study(_load(synthetic_db))
    data = dashboard_data(sd, target="x.yaml")
    text = json.dumps(data, allow_nan=False)  # raises on NaN / inf
    assert json.loads(text)["study"] == "synthetic"
    t = data["trials"]
    n = len(sd.front.trials)
    assert len(t["trial"]) == n == data["counts"]["complete"] and all(len(t[k]) == n for k in ("accuracy", "status"))
    assert t["status"].count(0) == data["counts"]["front"] == len(data["front_rows"]) == len(data["heatmaps"]["members"])
    assert {t["summaries"][i] for i in t["summary"]} == set(sd.front.trials["plan_summary"])
    assert data["counts"]["failed"] == len(sd.front.failed) > 0
    assert [r["trial"] for r in data["front_rows"]] == data["heatmaps"]["members"]
    assert data["heatmaps"]["layers"] == [layer["name"] for layer in sd.layers]
    assert data["latency_calibration"]["n"] > 0 and data["accuracy_calibration"]["n"] > 0
    assert data["cost"]["fidelity"] is not None
    assert [c["name"] for c in data["constraints"]] == ["min_accuracy"]
    assert data["constraints"][0]["value"] == pytest.approx(0.95)
    for key, members in data["pair_fronts"].items():
        x, y = key.split("|")
        assert members and set(members) <= set(t["trial"]), (x, y)


def test_trial_columns_deduplicates_plan_summaries():
    df = _trials([(2, 0.9, 1.0, 10, True, True), (1, 0.8, 1.0, 10, False, False), (3, 0.7, 2.0, 20, True, False)])
    df["plan_summary"] = ["a", "b", "a"]
    cols = trial_columns(df)
    assert cols["trial"] == [1, 2, 3] and cols["status"] == [2, 0, 1]
    assert cols["summaries"] == ["b", "a"] and cols["summary"] == [0, 1, 1]


# --- the page ---------------------------------------------------------------------------------------------------------

def test_html_is_self_contained_and_script_safe(synthetic_db, tmp_path):
    sd = read_study(_load(synthetic_db))
    data = dashboard_data(sd, target="</script><script>alert(1)</script>.yaml")
    page = render_html(data)
    tags = re.findall(r"<(?:script|link|img|iframe)\b[^>]*>", page.replace(plotly_js(), ""), flags=re.IGNORECASE)
    assert tags and not [t for t in tags if "src=" in t.lower() or "href=" in t.lower()]
    assert not re.search(r"https?://", page.replace(plotly_js(), ""))  # nothing to fetch besides plotly.js itself
    assert page.count("</script>") == 5  # error hook, data, live config, plotly.js, drawing code: nothing injected
    assert "Plotly" in page and len(page) > 3_000_000  # plotly.js inline
    assert "\\u003c/script\\u003e" in to_json({"x": "</script>"})


def test_write_atomic_replaces_whole_file_and_cleans_up(tmp_path):
    out = tmp_path / "sub" / "page.html"
    write_atomic("one", out)
    assert out.read_text() == "one"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not the temporary's private mode
    with pytest.raises(TypeError):
        write_atomic(123, out)  # not text: fails while writing the temporary file
    assert out.read_text() == "one"
    assert sorted(p.name for p in out.parent.iterdir()) == ["page.html"]


@needs_chromium
def test_page_in_chromium_counts_and_screenshot(synthetic_db, tmp_path):
    """The page drawn by a real browser: no JavaScript error, one marker per completed trial, one heatmap column per
    front member, calibration panels drawn, and a screenshot that is not blank."""
    from PIL import Image

    sd = read_study(_load(synthetic_db))
    out = tmp_path / "dash.html"
    assert main(["dashboard", f"sqlite:///{synthetic_db}", "-o", str(out)]) == 0
    shot = tmp_path / "shot.png"
    # Tall window: every figure is in view (the 3-D one is drawn only then). No name resolves: nothing is fetched.
    body, errors, stderr, _ = chromium(out.as_uri(), screenshot=shot, window=(1400, 4000),
                                       extra=["--host-resolver-rules=MAP * ~NOTFOUND"])
    assert_clean(body, errors, stderr)
    n, members = len(sd.front.trials), len(sd.front.front)
    assert n > 40 and members > 1
    assert int(body["data-front-points"]) == n
    assert int(body["data-heatmap-columns"]) == members
    assert int(body["data-trials"]) == n and int(body["data-front-members"]) == members
    if body["data-webgl"] == "1":  # Chromium without a GPU still offers software WebGL here
        assert int(body["data-3d-points"]) == n
    img = Image.open(shot).convert("RGB")
    assert img.size == (1400, 4000)
    colors = img.getcolors(maxcolors=1_000_000)
    most = max(count for count, _ in colors)
    assert len(colors) > 200, f"screenshot looks blank: {len(colors)} colours"
    assert most < 0.8 * img.size[0] * img.size[1]


@needs_chromium
def test_page_without_optional_data_shows_notes(synthetic_plain_db, tmp_path):
    out = tmp_path / "plain.html"
    before = hashlib.sha256(synthetic_plain_db.read_bytes()).hexdigest()
    assert main(["dashboard", str(synthetic_plain_db.parent), "-o", str(out)]) == 0
    # Read only: the study (and what optuna-dashboard shows of it) is left exactly as it was.
    assert hashlib.sha256(synthetic_plain_db.read_bytes()).hexdigest() == before
    page = out.read_text()
    assert '"latency_calibration":null' in page and '"accuracy_calibration":null' in page
    # Also the fallback for browsers without WebGL: the 3-D view gives way to a note.
    body, errors, stderr, dom = chromium(out.as_uri(), extra=["--disable-webgl"])
    assert_clean(body, errors, stderr)
    assert body["data-webgl"] == "0" and "The 3-D view needs WebGL" in dom
    assert "This study records no latency predictions" in dom and "no proxy/full accuracy pairs" in dom
    assert "records no fidelity level" in dom
    sd = read_study(_load(synthetic_plain_db))
    assert int(body["data-front-points"]) == len(sd.front.trials)
    assert int(body["data-heatmap-columns"]) == len(sd.front.front)


@pytest.mark.slow
@needs_chromium
def test_real_digits_study_page(tmp_path, digits_task):
    """A study run by the real driver (3 trials on digits) draws without error."""
    from autocompress.config import load_study_config
    from autocompress.search.driver import run_study

    cfg = write_study(tmp_path, n_trials=3, constraints={"min_accuracy": 0.5})
    run_study(load_study_config(cfg), progress=False, task=digits_task)
    assert main(["dashboard", str(cfg)]) == 0
    out = tmp_path / "s" / "dashboard.html"  # default: beside the study's database
    assert out.is_file()
    body, errors, stderr, _ = chromium(out.as_uri())
    assert_clean(body, errors, stderr)
    front = Front.from_study(_load(tmp_path / "s" / "study.db"))
    assert int(body["data-front-points"]) == len(front.trials) == 3
    assert int(body["data-heatmap-columns"]) == len(front.front)
    assert f"autocompress export {cfg} --trial" in out.read_text()


# --- CLI errors: clear message, non-zero exit, no page written ----------------------------------------------------------

def test_missing_study(tmp_path, capsys):
    out = tmp_path / "d.html"
    assert main(["dashboard", str(write_study(tmp_path, file="never_run")), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "run `autocompress search` first" in err and "Traceback" not in err
    assert main(["dashboard", f"sqlite:///{tmp_path / 'nothing.db'}", "-o", str(out)]) == 2
    assert main(["dashboard", str(tmp_path), "-o", str(out)]) == 2  # a folder without study.db
    assert "holds no study.db" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "never_run").exists() and not (tmp_path / "nothing.db").exists()


def _sentinel_unchanged(tmp_path, argv, capsys, expect):
    out = tmp_path / "d.html"
    out.write_text("previous page")
    assert main([*argv, "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expect in err and "Traceback" not in err
    assert out.read_text() == "previous page"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".d.html")] == []  # no temporary left
    return err


def test_empty_study(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.create_study(study_name="empty", storage=url, directions=["maximize", "minimize", "minimize"])
    _sentinel_unchanged(tmp_path, ["dashboard", url], capsys, "no completed trial yet")


def test_only_failed_trials(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'failed.db'}"
    study = optuna.create_study(study_name="failed", storage=url, directions=["maximize", "minimize", "minimize"])
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                                  user_attrs={"error": "RuntimeError: out of memory"}))
    err = _sentinel_unchanged(tmp_path, ["dashboard", url], capsys, "all 2 finished trials failed")
    assert "RuntimeError: out of memory" in err


def test_help_and_flag_checks(capsys):
    with pytest.raises(SystemExit) as e:
        main(["dashboard", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: autocompress dashboard" in out and "--serve" in out and "127.0.0.1" in out
    with pytest.raises(SystemExit) as e:
        main(["dashboard", "x.yaml", "--port", "9000"])  # --port without --serve
    assert e.value.code == 2
    assert "only apply with --serve" in capsys.readouterr().err


# --- the live server --------------------------------------------------------------------------------------------------

def _get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers.get("Content-Type"), r.read().decode()


def test_server_refreshes_from_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    study = make_synthetic_study(url, 5, seed=1, failed_share=0.0)
    reader = optuna.load_study(study_name=study.study_name, storage=url)  # as the server opens it
    server = make_server(lambda: dashboard_data(read_study(reader), target=url), port=0, refresh_s=0.5,
                         min_interval_s=0.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert server.server_address[0] == "127.0.0.1"
        status, ctype, page = _get(server.url)
        assert status == 200 and ctype.startswith("text/html")
        assert '"endpoint":"data.json","interval_ms":500' in page and "Plotly" in page
        _, ctype, body = _get(server.url + "data.json")
        assert ctype == "application/json" and json.loads(body)["counts"]["complete"] == 5
        # Another process's search finishes a trial: the next poll sees it.
        donor = optuna.load_study(study_name=study.study_name, storage=url).trials[0]
        study.add_trial(optuna.trial.create_trial(values=donor.values, user_attrs=donor.user_attrs))
        data = json.loads(_get(server.url + "data.json")[2])
        assert data["counts"]["complete"] == 6
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(server.url + "../etc/passwd")
        assert e.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_study_version_changes_with_trials_and_attrs():
    study = make_synthetic_study(optuna.storages.InMemoryStorage(), 3, failed_share=0.0)
    v0 = study_version(study)
    assert study_version(study) == v0
    study.enqueue_trial({})  # a waiting trial
    v1 = study_version(study)
    assert v1 != v0
    study.set_user_attr("note", 1)
    assert study_version(study) != v1


def test_server_reports_unreadable_study_without_dying():
    from autocompress.errors import StudyNotFoundError

    def produce():
        raise StudyNotFoundError("the study database is gone")

    server = make_server(produce, port=0, min_interval_s=0.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(server.url + "data.json")
        assert e.value.code == 503 and "database is gone" in json.loads(e.value.read())["error"]
    finally:
        server.shutdown()
        server.server_close()


@needs_chromium
def test_live_page_starts_empty_then_redraws_when_the_study_changes(synthetic_db):
    """In a real browser: a study with no completed trial yet draws without error; the served page polls data.json
    and redraws once trials are there."""
    empty = optuna.create_study(directions=["maximize", "minimize", "minimize"], study_name="live")
    empty.set_user_attr("teacher", {"accuracy": 0.98, "latency_ms": 0.03, "size_bytes": 1000})
    empty.set_user_attr("objectives", DIRS)
    first = dashboard_data(read_study(empty), target="x")
    assert first["counts"]["complete"] == 0
    sd = read_study(_load(synthetic_db))
    second = dashboard_data(sd, target="x")
    calls = []

    def produce():
        calls.append(1)
        return first if len(calls) == 1 else second

    server = make_server(produce, port=0, refresh_s=0.3, min_interval_s=0.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        body, errors, stderr, _ = chromium(server.url, budget_ms=4000, extra=["--disable-webgl"])
    finally:
        server.shutdown()
        server.server_close()
    assert_clean(body, errors, stderr)
    assert body.get("data-live") == "1" and int(body.get("data-live-polls", 0)) >= 1
    assert body["data-draws"] == "2"
    assert int(body["data-front-points"]) == len(sd.front.trials)
    assert int(body["data-heatmap-columns"]) == len(sd.front.front)


def test_serve_cli_binds_localhost_and_stops_on_ctrl_c(synthetic_db):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "autocompress", "dashboard", f"sqlite:///{synthetic_db}", "--serve",
                             "--port", "0", "--refresh", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            # a child inherits an ignored SIGINT (and Python then keeps ignoring it): some library
                            # loaded earlier in the test process may have set that; a terminal's Ctrl-C would not
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    timer = threading.Timer(60, proc.kill)
    timer.start()
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert m, line + proc.stderr.read()
        status, _, page = _get(m.group(1))
        assert status == 200 and '"interval_ms":1000' in page
        data = json.loads(_get(m.group(1) + "data.json")[2])
        assert data["study"] == "synthetic" and data["counts"]["complete"] > 0
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)  # reads the pipes while waiting: a full stderr pipe cannot block it
        assert proc.returncode == 0, err[-2000:]
        assert "Traceback" not in err
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
