"""tools/check_cuda.py on the CPU: its checks, failure paths and table (no GPU needed).

The script's CUDA run itself needs a GPU (see the README's GPU section); here the same code runs
with --provider cpu, and the failure paths are provoked on purpose."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import check_cuda  # noqa: E402

QUICK = ["--provider", "cpu", "--batches", "1", "2", "--repeats", "1"]


def test_cpu_self_test_passes_and_prints_the_table(capsys):
    assert check_cuda.main(QUICK) == 0
    out = capsys.readouterr().out
    assert "input gradient: max|cpu - cpu| / max|cpu| = 0.00e+00 (ok)" in out
    rows = [line for line in out.splitlines() if line.startswith("| 1 |") or
            line.startswith("| 2 |")]
    assert len(rows) == 2
    assert all(float(cell) > 0 for row in rows for cell in row.strip("|").split("|")[1:])
    assert "all checks passed" in out


def test_a_gradient_that_differs_from_the_cpu_fails(monkeypatch, capsys):
    real = check_cuda.ModelRunner.gradients

    def off_by_1e3(self, batch, seed):  # the "device" runner is created first
        outputs = real(self, batch, seed)
        if self._options[0] == "cpu" and off_by_1e3.calls % 2 == 0:
            outputs.input_grad = outputs.input_grad * (1 + 1e-3)
        off_by_1e3.calls += 1
        return outputs
    off_by_1e3.calls = 0
    monkeypatch.setattr(check_cuda.ModelRunner, "gradients", off_by_1e3)
    assert check_cuda.main(QUICK) == 1
    captured = capsys.readouterr()
    assert "input gradient: max|cpu - cpu| / max|cpu| = 1.00e-03 (FAIL)" in captured.out
    assert "FAIL: model.onnx: input gradient differs from the CPU's by 1.00e-03" in captured.err


def test_a_compute_node_on_the_cpu_is_a_silent_fallback(tmp_path):
    from swag_onnx import card as cards
    from swag_onnx.runtime import augmented_path

    onnx_path, card = cards.resolve(None)
    layers = card["default_layers"]
    x = check_cuda.photos(card, 1)
    feed = {"image": x, "swag.seed": np.zeros((1, 1000), np.float32)}
    on_cpu = check_cuda.placement(augmented_path(onnx_path, layers, card.get("score")), "cpu",
                                  feed)
    assert on_cpu.counts["CPUExecutionProvider"] > 100 and on_cpu.cpu_compute == []
    # asked for CUDA where it cannot load: onnxruntime places every Conv on the CPU
    where = check_cuda.placement(augmented_path(onnx_path, layers, card.get("score")), "cuda",
                                 feed)
    assert any(op.startswith(("Conv", "FusedConv", "NchwcConv")) for op in where.cpu_compute)


def test_a_provider_onnxruntime_lacks_is_one_line_and_exit_2(monkeypatch, capsys):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CPUExecutionProvider"])
    assert check_cuda.main(["--batches", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no CUDAExecutionProvider here" in err[0]


def test_cuda_that_cannot_load_is_one_line_and_exit_2(capsys):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.fail("this test needs the onnxruntime-gpu wheel (the project's dependency)")
    code = check_cuda.main(["--batches", "1", "--repeats", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    if code == 0:  # a machine where CUDA really runs: nothing to refuse
        return
    assert code == 2 and len(err) == 1 and "CUDA could not be loaded" in err[0]


@pytest.mark.parametrize("argv", [["--batches", "0"], ["--repeats", "0"],
                                  ["--tolerance", "0"], ["--provider", "tpu"]])
def test_bad_usage_exits_2(argv):
    with pytest.raises(SystemExit) as exit_:
        check_cuda.parse_args(argv)
    assert exit_.value.code == 2


def test_relative_error():
    reference = np.array([0.0, 2.0, -4.0])
    assert check_cuda.relative_error(reference + [0, 0, 4e-4], reference) == pytest.approx(1e-4)
    assert check_cuda.relative_error(np.zeros(3), np.zeros(3)) == 0.0
