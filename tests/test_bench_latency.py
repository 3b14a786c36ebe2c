"""bench/latency.py: one tiny run end to end on the real MiniLM weights (what it writes,
how it compiles ours and that both frameworks agree; no timing is asserted)."""
import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import latency  # noqa: E402  (bench/)

from dynabert_jax import compile_options  # noqa: E402


@pytest.mark.slow
def test_a_tiny_run_matches_pytorch_and_records_how_ours_was_compiled(tmp_path):
    out = tmp_path / "latency.json"
    latency.main(["--shapes", "minilm", "--batch-sizes", "2", "--seq", "16", "--reps", "2",
                  "--warmup", "0", "--settle-ms", "0", "--subnets", "0.25x0.5,1x1",
                  "--host-memory", "system",   # no glibc settings for pytest
                  "--out", str(out)])
    result = json.loads(out.read_text())
    # 512-bit vectors where this CPU has AVX-512, as the trainer compiles (else XLA's)
    assert result["settings"]["compiler_options"] == compile_options.compiler_options(
        512, "cpu")
    (table,) = result["tables"]
    assert (table["model"], table["batch_size"], table["seq_len"]) == ("minilm", 2, 16)
    full, small = table["rows"]                      # the full network is timed first
    assert (full["width"], full["depth"], small["width"], small["depth"]) == (1, 1, .25, .5)
    for row in (full, small):   # the same logits as the stock PyTorch model of its shape
        assert row["parity_ok"] and row["max_abs_diff"] <= 1e-3
        assert len(row["jax_ms_all"]) == len(row["torch_ms_all"]) == 2
    assert full["flops_ratio"] == 1 and 0 < small["flops_ratio"] < 0.2
    assert small["speedup_over_flops_ratio"] == pytest.approx(
        small["speedup"] * small["flops_ratio"], rel=1e-3)


def test_xla_default_vector_width_compiles_without_options():
    args = latency.parse_args(["--cpu-vector-width", "0"])
    assert compile_options.compiler_options(args.cpu_vector_width, "cpu") is None
    assert latency.parse_args([]).cpu_vector_width == 512
    with pytest.raises(SystemExit):
        latency.parse_args(["--cpu-vector-width", "384"])
