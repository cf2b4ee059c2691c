"""Speed-normalized timing: every measurement is timed beside the reference workload, and a study's latencies
(measured and predicted) are at the one reference speed it recorded at its start."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import run_complete, write_study

from autocompress.latency.model import Sample, at_reference_speed
from autocompress.latency.study import SPEED_ATTR
from autocompress.runtime import TimingSpec, time_interleaved
from autocompress.runtime import base as runtime_base
from autocompress.runtime.reference import PARTS, REFERENCE_VERSION, reference_model, reference_ms


def _busy(ms: float) -> None:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


def test_the_reference_graphs_are_fixed_and_run():
    """Three parts, the same bytes every time: a compute graph with about 1 MB of weights, a 4 MB matrix-vector pair
    for the last-level cache and a 24 MB one beyond it."""
    weights = {}
    for part in PARTS:
        assert reference_model(part).SerializeToString() == reference_model(part).SerializeToString()
        weights[part] = 4 * sum(int(np.prod(t.dims)) for t in reference_model(part).graph.initializer)
    assert weights["memory"] > 20e6 > weights["cache"] > 3e6 > weights["compute"]
    assert 0.0 < reference_ms(blocks=2) < 50.0


def test_timing_reports_the_time_relative_to_the_reference():
    t = time_interleaved({"a": lambda: _busy(0.3)}, TimingSpec(warmup=2, runs=10, rounds=3))["a"]
    assert t.reference_ms is not None and t.reference_ms > 0
    assert t.normalized == pytest.approx(t.latency_ms / t.reference_ms, rel=0.3)
    # against each part alone too; the parts' weighted times add up to the reference's
    assert set(t.parts) == set(PARTS) and all(n > 0 and ms > 0 for n, ms in t.parts.values())
    assert sum(PARTS[p][2] * ms for p, (_, ms) in t.parts.items()) == pytest.approx(t.reference_ms, rel=0.3)
    assert t.at_speed(2 * t.reference_ms) == pytest.approx(2 * t.normalized * t.reference_ms)
    off = time_interleaved({"a": lambda: _busy(0.1)}, TimingSpec(warmup=1, runs=3, reference=False))["a"]
    assert off.normalized is None and off.reference_ms is None and off.at_speed(1.0) == off.latency_ms


def test_a_slow_spell_slows_the_reference_alike_and_the_normalized_time_stays(monkeypatch):
    """Rounds 3 and 4 run twice as slow (both the workload and the reference): the absolute round medians double,
    the per-round normalized times do not."""
    state = {"slow": False, "blocks": 0}

    class Stub:
        names = ["compute"]
        last_parts: list[float] = []

        def block(self, calls: int = 10) -> float:
            state["blocks"] += 1
            state["slow"] = state["blocks"] in (3, 4)  # the blocks before/after rounds 3 and 4 (of 1..4)
            self.last_parts = [0.2 if state["slow"] else 0.1]
            return self.last_parts[0]

    monkeypatch.setattr("autocompress.runtime.reference.reference", lambda threads=1: Stub())
    t = runtime_base.time_interleaved({"a": lambda: _busy(0.6 if state["slow"] else 0.3)},
                                      TimingSpec(warmup=1, runs=15, rounds=4))["a"]
    assert max(t.rounds_ms) > 1.6 * min(t.rounds_ms)          # the absolute figure moved with the spell
    assert t.normalized == pytest.approx(3.0, rel=0.25)        # 0.3 / 0.1 = 0.6 / 0.2
    assert t.parts["compute"][0] == pytest.approx(t.normalized) and t.parts["compute"][1] == t.reference_ms


def test_profile_samples_are_fitted_at_the_profile_reference_speed():
    samples = [Sample(kernels=[], overhead=[1.0, 0.0, 0.0], latency_ms=abs_ms,
                      spec={"normalized": norm, "reference_ms": ref, "absolute_ms": abs_ms})
               for abs_ms, norm, ref in ((1.0, 4.0, 0.25), (3.0, 6.0, 0.5), (1.2, 4.0, 0.3))]
    assert at_reference_speed(samples) == 0.3
    assert [s.latency_ms for s in samples] == pytest.approx([1.2, 1.8, 1.2])
    assert at_reference_speed([Sample(kernels=[], overhead=[1, 0, 0], latency_ms=1.0)]) is None


def test_a_study_records_its_speed_and_scores_measurements_at_it(tmp_path):
    _, study, done = run_complete(write_study(tmp_path, n_trials=2, warm_start=False, sensitivity=False), 2)
    record = study.user_attrs[SPEED_ATTR]
    assert record["version"] == REFERENCE_VERSION and record["reference_ms"] > 0 and record["threads"] == 1
    for t in done:
        ua = t.user_attrs
        assert ua["latency_source"] == "measured" and ua["latency_reference_ms"] > 0
        # scored = (absolute / reference around it) * the study's reference: exact up to the per-round medians
        expected = ua["latency_absolute_ms"] / ua["latency_reference_ms"] * record["reference_ms"]
        assert ua["latency_ms"] == pytest.approx(expected, rel=0.35)
        assert ua["latency_ms"] == t.values[1]
