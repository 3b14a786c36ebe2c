"""bench/ratio_drift.py: its option parsing, its per-thread counters and one tiny run end to
end (what it writes, not how fast anything is: no timing is asserted)."""
import json
import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import ratio_drift  # noqa: E402  (bench/)


def test_parse_options_takes_key_value_pairs_and_rejects_the_rest():
    assert ratio_drift.parse_options([]) == {}
    assert ratio_drift.parse_options(["a=b", "c=d=e"]) == {"a": "b", "c": "d=e"}
    assert ratio_drift.parse_options(["t=True", "f=false", "i=3", "x=0.5"]) == {
        "t": True, "f": False, "i": 3, "x": 0.5}
    for bad in ("novalue", "=x"):
        with pytest.raises(SystemExit, match="KEY=VALUE"):
            ratio_drift.parse_options([bad])


def test_add_delta_sums_per_thread_name_over_threads_alive_at_both_reads():
    before = {"1": ("pool", 10, 5), "2": ("pool", 20, 7), "3": ("main", 1, 1)}
    after = {"1": ("pool", 13, 6), "2": ("pool", 21, 9), "4": ("pool", 99, 99)}
    acc = {"pool": [100, 100]}
    ratio_drift.add_delta(acc, before, after)
    assert acc == {"pool": [104, 103]}   # thread 3 ended, thread 4 is new: neither counts
    ratio_drift.add_delta(acc, None, after)   # no /proc: nothing added
    assert acc == {"pool": [104, 103]}


@pytest.mark.skipif(not ratio_drift.TASKS.is_dir(), reason="no /proc/self/task here")
def test_thread_counters_reads_this_process_threads():
    counters = ratio_drift.thread_counters()
    assert str(os.getpid()) in counters   # the main thread's id is the process id
    for name, ticks, switches in counters.values():
        assert isinstance(name, str) and ticks >= 0 and switches >= 0


def test_a_tiny_run_writes_each_block_and_the_summary(tmp_path):
    out = tmp_path / "drift.json"
    ratio_drift.main(["--subnets", "0.25x0.5", "--batch", "1", "--seq", "16",
                      "--blocks", "2", "--calls", "1", "--warmup", "0",
                      "--host-memory", "system",   # no glibc settings for the test process
                      "--compiler-option", "xla_cpu_enable_fast_math=false",
                      "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["compiler_options"] == {"xla_cpu_enable_fast_math": False}
    assert len(result["blocks"]) == 2
    names = {"w1_d1", "w1_d1+options", "w0.25_d0.5", "w0.25_d0.5+options"}
    for block in result["blocks"]:
        assert set(block["nets"]) == names
        small = block["nets"]["w0.25_d0.5"]
        assert small["flops_ratio"] == 0.125 and len(small["ms_all"]) == 1
        assert small["speedup"] == pytest.approx(
            block["nets"]["w1_d1"]["ms"] / small["ms"], rel=1e-3)
        assert "over_default" in block["nets"]["w0.25_d0.5+options"]
        assert "over_default" not in small
    assert result["summary"]["w0.25_d0.5"]["blocks_at_or_over_0_9"] in (0, 1, 2)
    assert "(0.25, 0.5)+options" in result["markdown"]
