"""bench/train_step_options.py: one tiny run end to end (what it writes and that the two
compiles train alike, not how fast anything is: no timing is asserted)."""
import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import train_step_options  # noqa: E402  (bench/)


def test_a_tiny_run_trains_both_compiles_alike_and_writes_the_ratios(tmp_path):
    out = tmp_path / "ab.json"
    summary = train_step_options.main([
        "--shape", "tiny", "--stage", "1", "--batch", "2", "--seq", "16", "--steps", "3",
        "--warmup", "1", "--host-memory", "system",   # no glibc settings for pytest
        "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["compiler_options"] == {"xla_cpu_prefer_vector_width": 512}
    assert result["students"] == 4 and result["summary"] == summary
    assert [len(result["step_times_s"][n]) for n in ("default", "options")] == [3, 3]
    assert len(result["ratios"]) == 3 and len(result["losses"]["options"]) == 4
    assert summary["ratio_min"] <= summary["ratio_median"] <= summary["ratio_max"]
    # the same training up to float sums taken in another order
    assert summary["max_abs_loss_diff"] < 1e-4 and summary["max_abs_param_diff"] < 1e-5
    assert all(0 < x < float("inf") for x in result["losses"]["default"])
    assert "| tiny | 1 (4 students) |" in result["markdown"]


def test_an_option_without_a_value_is_refused():
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        train_step_options.main(["--shape", "tiny", "--compiler-option", "novalue"])
