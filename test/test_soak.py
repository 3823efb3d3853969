"""The CI version of the soak (``benchmarks/soak.py``): the live node fed 640x480 stereo at 30 Hz
for 60 s (``STEREO_POSE3D_SOAK_SECONDS`` changes it, 0 skips it; the full 10-minute run is the
benchmark), with the tiny fixture network.

Asserts: resident memory growth after a 15 s warm-up under 20 MB, threads and open files not
growing, the worker mailbox (``pending``) at most 1 and the synchronizer (``sync_queued``) within
its 2 x queue_size bound at every sample, end-to-end latency p99 under 1 s and not drifting
upwards, zero failed frames, every synchronized pair processed or dropped, nearly every pair
delivered, clean exit. The figures are printed (``-s``) for the record.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
from test_fuzz_messages import show_counts
from test_node_harness import REPO

SECONDS = float(os.environ.get("STEREO_POSE3D_SOAK_SECONDS", "60"))


def load_soak():
    spec = importlib.util.spec_from_file_location("soak", REPO / "benchmarks" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(SECONDS <= 0, reason="STEREO_POSE3D_SOAK_SECONDS=0")
def test_soak_60s(fixture_checkpoint, tmp_path, request):
    soak = load_soak()
    result = soak.run_soak(
        SECONDS, fixture_checkpoint, rate=30.0, size=(640, 480), warmup_s=min(15.0, SECONDS / 4),
        sample_s=2.0, device="cpu", queue_size=10, log_dir=tmp_path, progress=None,
    )  # fmt: skip
    checks = soak.judge(result, max_growth_mb=20.0, max_p99_s=1.0)
    show_counts(request, ["", soak.to_markdown(result, checks)])
    fr, mem, q = result["frames"], result["memory"], result["queues"]
    assert result["duration_s"] >= 0.95 * SECONDS
    assert mem["growth_after_warmup_mb"] < 20.0, mem
    assert mem["threads_end"] <= mem["threads_after_warmup"] + 2, mem
    assert mem["fds_end"] <= mem["fds_after_warmup"] + 5, mem
    assert all(s["pending"] <= 1 for s in result["samples"]), q
    assert all(s["sync_queued"] <= 2 * 10 for s in result["samples"]), q
    lat = result["latency_ms"]["end_to_end_after_warmup"]
    assert lat["n"] > 10 and lat["p99"] < 1000.0, lat
    assert checks["latency_drift"][0], checks["latency_drift"]
    assert fr["failed"] == 0 and not fr["rejected"], fr
    assert fr["processed"] + fr["dropped"] == fr["synchronized"], fr
    assert fr["processed"] >= 0.25 * fr["sent"], fr  # the tiny network keeps up with most
    assert min(fr["received_left"], fr["received_right"]) >= 0.95 * fr["sent"], fr
    assert fr["outputs_received"] >= 0.95 * fr["processed"], fr
    assert result["node_exit_code"] == 0 and result["node_log_tracebacks"] == 0
    assert all(ok for ok, _ in checks.values()), checks
