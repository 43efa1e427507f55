"""`make bench-smoke`'s OUR side (no SAEDashboard venv in tests) writes a sane report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import run
from bench.run import main, pair_ratio, parse

KEYS = {
    "ours_wall_s", "saedashboard_wall_s", "ratio_wall", "ours_peak_rss_mb",
    "saedashboard_peak_rss_mb", "ratio_peak_rss", "matmul_gflops",
    "activation_pass_fraction_of_matmul_rate", "d_sae", "n_tokens", "model", "machine", "agreement",
}  # fmt: skip


@pytest.mark.slow
def test_smoke_ours_only_writes_every_key_with_sane_values(tmp_path: Path) -> None:
    main(["--smoke", "--ours-only", "--results", str(tmp_path)])
    out = json.loads((tmp_path / "latest.json").read_text())
    assert set(out) >= KEYS
    assert out["ours_wall_s"] > 0 and out["ours_peak_rss_mb"] > 50
    assert out["matmul_gflops"] > 0.1
    runs = sum(len(s["runs"]["ours"]) for s in out["sizes"])
    measured = out["matmul_gflops_measured"]  # one before each of our runs, one at the end
    assert len(measured) == runs + 1 and out["matmul_gflops"] == max(measured)
    assert 0 < out["activation_pass_fraction_of_matmul_rate"] < 1
    stages = out["throughput"]["stages_s"]
    assert set(stages) == {
        "activation_pass", "finalisation", "caching", "serialization", "validation", "archive",
        "whole_export", "startup_and_overhead",
    }  # fmt: skip
    assert all(s >= 0 for s in stages.values())
    overhead = stages.pop("startup_and_overhead")
    assert sum(stages.values()) - stages["whole_export"] <= stages["whole_export"]
    assert sum(stages.values()) - stages["whole_export"] + overhead == pytest.approx(
        out["ours_wall_s"]
    )  # the stages and the time outside them make up the wall
    steps = out["outside_stages"]  # the archive's facts are read afterwards, by run.py
    assert list(steps) == [
        "imports", "stack_start", "validate_export", "export_job", "download", "stack_stop",
        "exit",
    ]  # fmt: skip
    assert all(t["wall"] >= 0 for t in steps.values())
    assert sum(t["wall"] for t in steps.values()) == pytest.approx(overhead, abs=0.05)
    tp = out["throughput"]
    assert tp["output_bytes"] >= tp["json_bytes"] > 0 and tp["gzip_bytes"] >= 0
    assert set(tp["floor_s"]) == {"serialization", "validation", "archive", "whole_export"}
    assert all(f > 0 for f in tp["floor_s"].values())
    assert out["d_sae"] == 64 and out["n_tokens"] == 64 * 128
    assert [s["d_sae"] for s in out["sizes"]] == [64]
    run = out["sizes"][0]["runs"]["ours"][0]
    assert (run["shards"], run["forwards"]) == (1, 1)  # the replay sizes the run by them
    (estimate,) = out["estimates"]  # one run, so the priors'
    assert not estimate["from_measured_rates"] and estimate["estimated_s"] > 0
    assert estimate["measured_s"] == out["sizes"][0]["runs"]["ours"][0]["export_wall_s"] > 0
    assert set(estimate["stages"]) == set(stages) - {"whole_export"}
    assert all(c["remaining_s"] > 0 and c["eta_s"] >= 0 for c in estimate["eta_checks"])
    report = (tmp_path / "latest.md").read_text()
    assert report.startswith("# Bench (smoke)")
    assert "## Estimates" in report


def test_default_run_is_two_sizes_over_262k_tokens_two_pairs_each_plus_scaling() -> None:
    args = parse([])
    assert args.d_sae == [4096, 16384] and args.rows * args.context == 262_144
    assert args.pairs == 2 and not args.no_scaling
    assert parse(["--smoke"]).no_scaling
    assert parse(["--d-sae", "512", "--pairs", "2"]).d_sae == [512]


def test_ratios_are_the_median_of_per_pair_ratios() -> None:
    ours = [{"wall_s": 10.0}, {"wall_s": 20.0}, {"wall_s": 10.0}]
    theirs = [{"wall_s": 30.0}, {"wall_s": 20.0}, {"wall_s": 50.0}]
    assert pair_ratio(ours, theirs, "wall_s") == 3.0  # of 3, 1 and 5; medians' ratio is 3 too
    assert pair_ratio(ours[:2], theirs[:2], "wall_s") == 2.0  # of 3 and 1, not 25 / 15
    assert pair_ratio(ours, [], "wall_s") is None


def test_without_gnu_time_a_run_is_measured_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lent device's image has no /usr/bin/time: the rusage of the command's processes,
    read by a Python wrapper, gives the same peak RSS and CPU seconds."""
    grow = [sys.executable, "-c", "x = bytearray(200 << 20); x[::4096] = b'1' * len(x[::4096])"]
    with_time = run.timed(grow, tmp_path, threads=1)
    monkeypatch.setattr(run, "GNU_TIME", tmp_path / "no-such-time")
    without = run.timed(grow, tmp_path, threads=1)
    assert 200 < without["peak_rss_mb"] == pytest.approx(with_time["peak_rss_mb"], rel=0.1)
    assert without["cpu_s"] > 0 and without["wall_s"] > 0
    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    with pytest.raises(RuntimeError, match="failed"):
        run.timed(failing, tmp_path, threads=1)
