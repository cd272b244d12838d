"""`advssm bench` really runs the kernel benchmarks (on the "tiny" sizes, 1 repeat) and rejects bad names."""
import json

import pytest
import torch
from advssm.cli.commands.bench import select_sizes
from advssm.cli.errors import ConfigError
from advssm.ssm_layers.benchmark import SIZES

CPU = torch.device("cpu")


def test_bench_runs_every_op_on_tiny_sizes(helpers):
    result = helpers.invoke("bench", "--sizes", "tiny", "--repeats", "1", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # the progress lines go to stderr
    assert data["device"] == "cpu" and data["torch"] == torch.__version__
    rows = data["rows"]
    assert {row["op"] for row in rows} == set(SIZES["tiny"])
    for op, sizes in SIZES["tiny"].items():
        timed = {row["backend"] for row in rows if row["op"] == op}
        assert {"reference", "torch"} <= timed, op
        assert [row["size"] for row in rows if row["op"] == op and row["backend"] == "reference"] == sizes
    assert "loop" in {row["backend"] for row in rows if row["op"] == "selective_scan"}
    for row in rows:
        assert row["repeats"] == 1 and row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0 and row["ratio_fwd"] > 0


def test_bench_text_table_with_chosen_ops_and_backends(helpers):
    result = helpers.invoke("bench", "--sizes", "tiny", "--repeats", "1", "--ops", "selective_scan,fft_conv",
                            "--backends", "torch", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "[1/2] selective_scan batch=2 dim=8 N=4 L=33" in result.output and "1 CPU threads" in result.output
    table = [line for line in result.output.splitlines() if line.startswith("| ") and "| op |" not in line]
    assert [(line.split(" | ")[0][2:], line.split(" | ")[2]) for line in table] == [
        ("selective_scan", "reference"), ("selective_scan", "torch"), ("fft_conv", "reference"), ("fft_conv", "torch")]


def test_quick_keeps_the_first_size_of_each_op():
    assert select_sizes("cpu", True, None, CPU) == {op: sizes[:1] for op, sizes in SIZES["cpu"].items()}
    assert select_sizes(None, False, ["fft_conv"], CPU) == {"fft_conv": SIZES["cpu"]["fft_conv"]}
    with pytest.raises(ConfigError, match="unknown op 'fft'"):
        select_sizes("tiny", False, ["fft"], CPU)


@pytest.mark.parametrize("args,message", [
    (["--sizes", "tiy"], "unknown size set 'tiy'; did you mean 'tiny'?"),
    (["--ops", "selective_scn"], "unknown op 'selective_scn'; did you mean 'selective_scan'?"),
    (["--backends", "trition"], "unknown backend 'trition'; did you mean 'triton'?"),
    (["--device", "nowhere"], "invalid --device 'nowhere'"),
    (["--repeats", "0"], "Invalid value for '--repeats'"),
])
def test_bench_usage_errors_exit_2(helpers, args, message):
    result = helpers.invoke("bench", *args)
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_bench_cuda_without_cuda(helpers):
    result = helpers.invoke("bench", "--device", "cuda")
    assert result.exit_code == 2 and "CUDA is not available" in result.output
