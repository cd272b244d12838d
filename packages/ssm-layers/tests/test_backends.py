"""Backend dispatch: auto / triton / torch / reference, the ADVSSM_BACKEND override, clear errors
instead of silent fallbacks, ``backends()``, and the package working without triton installed."""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from advssm.ssm_layers import BackendError, backends, diag_scan, fft_conv, selective_scan, vandermonde_kernel
from advssm.ssm_layers.layers import S4, S4D, S6, Attention, Mega
from advssm.ssm_layers.ops import resolve_backend

fftconv_mod = importlib.import_module("advssm.ssm_layers.ops.fftconv")
ss_mod = importlib.import_module("advssm.ssm_layers.ops.selective_scan")


@pytest.fixture(autouse=True)
def no_overrides(monkeypatch):
    """Every test starts without ADVSSM_BACKEND and outside the Triton interpreter."""
    monkeypatch.delenv("ADVSSM_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def _scan_inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 3, 9, generator=g), torch.rand(2, 3, 9, generator=g), -torch.rand(3, 4, generator=g),
            torch.randn(2, 4, 9, generator=g), torch.randn(2, 4, 9, generator=g))


def test_auto_is_the_torch_path_on_the_cpu():
    x = torch.zeros(2)
    assert resolve_backend("auto", x) == "torch"
    for explicit in ("torch", "reference"):
        assert resolve_backend(explicit, x) == explicit


@pytest.mark.parametrize("env", ["torch", "reference", " Reference "])
def test_environment_variable_overrides_auto_only(monkeypatch, env):
    monkeypatch.setenv("ADVSSM_BACKEND", env)
    x = torch.zeros(2)
    assert resolve_backend("auto", x) == env.strip().lower()
    assert resolve_backend("torch", x) == "torch"  # an explicit choice wins over the environment


def _count_reference_calls(monkeypatch, module, record):
    """Make the op's table entry (``module.<record>``) count the calls of its reference."""
    calls, op = [], getattr(module, record)
    counted = dataclasses.replace(op, reference=lambda *a: calls.append(1) or op.reference(*a))
    monkeypatch.setattr(module, record, counted)
    return calls


def test_environment_variable_routes_the_ops(monkeypatch):
    calls = _count_reference_calls(monkeypatch, ss_mod, "SELECTIVE_SCAN")
    monkeypatch.setenv("ADVSSM_BACKEND", "reference")
    selective_scan(*_scan_inputs())
    assert calls == [1]


def test_unknown_backend_names_are_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        selective_scan(*_scan_inputs(), backend="cuda")
    monkeypatch.setenv("ADVSSM_BACKEND", "fast")
    with pytest.raises(ValueError, match="ADVSSM_BACKEND='fast' is not a backend"):
        selective_scan(*_scan_inputs())


def test_triton_on_the_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    C = torch.randn(2, 3, dtype=torch.complex64)
    calls = [
        lambda: selective_scan(*_scan_inputs(), backend="triton"),
        lambda: diag_scan(torch.rand(3, 1), torch.randn(2, 3, 5), backend="triton"),
        lambda: vandermonde_kernel(C, -C.abs() + 0j, 4, backend="triton"),
    ]
    for call in calls:
        with pytest.raises(BackendError, match="cannot run on cpu.*backend='torch'"):
            call()
    monkeypatch.setenv("ADVSSM_BACKEND", "triton")  # the override does not fall back either
    with pytest.raises(BackendError, match="cannot run on cpu"):
        selective_scan(*_scan_inputs())


def test_fft_conv_backends():
    g = torch.Generator().manual_seed(1)
    u, K, D = torch.randn(2, 3, 20, generator=g), torch.randn(3, 20, generator=g), torch.randn(3, generator=g)
    torch.testing.assert_close(fft_conv(u, K, D, backend="reference"), fft_conv(u, K, D, backend="torch"),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(BackendError, match="fft_conv has no Triton kernel"):
        fft_conv(u, K, D, backend="triton")


def test_fft_conv_under_a_global_triton_override_stays_on_torch_fft(monkeypatch):
    monkeypatch.setenv("ADVSSM_BACKEND", "triton")
    u, K = torch.randn(1, 2, 6), torch.randn(2, 6)
    torch.testing.assert_close(fft_conv(u, K), fftconv_mod.fft_conv_torch(u, K))


def test_backends_report():
    report = backends()
    assert set(report) == {"selective_scan", "diag_scan", "vandermonde_kernel", "fft_conv", "ssd"}
    for op, entry in report.items():
        expected = {"reference", "torch"} | ({"triton"} if op != "fft_conv" else set())
        assert set(entry) == expected, op
        assert entry["reference"]["available"] and entry["torch"]["available"]
        for status in entry.values():
            assert isinstance(status["available"], bool) and status["reason"]
    triton = report["selective_scan"]["triton"]
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        return  # where the kernels can run, the reason only has to be there (checked above)
    assert not triton["available"]
    if importlib.util.find_spec("triton") is None:  # the default test environment has no triton
        assert "not importable" in triton["reason"] and "pip install triton" in triton["reason"]
    else:
        assert "CUDA" in triton["reason"]


def test_layers_without_a_triton_path_refuse_it_rather_than_ignore_it():
    for make in (lambda: S4(4, d_state=4, backend="triton"), lambda: Attention(4, n_heads=2, backend="triton"),
                 lambda: Mega(4, backend="triton")):
        with pytest.raises(ValueError, match="backend='triton' is not available"):
            make()
    assert Mega(4, ema="scan", backend="triton").backend == "triton"


@pytest.mark.parametrize("make", [lambda: S4D(4, d_state=4, backend="triton"), lambda: S6(4, backend="triton"),
                                  lambda: Mega(4, ema="scan", backend="triton")])
def test_layers_asked_for_triton_on_the_cpu_fail_at_forward(make):
    with pytest.raises(BackendError, match="cannot run on cpu"):
        make()(torch.randn(1, 5, 4))


def test_layer_reference_backend_runs_the_references(monkeypatch):
    calls = _count_reference_calls(monkeypatch, fftconv_mod, "FFT_CONV")
    torch.manual_seed(0)
    fast, slow = S4D(4, d_state=4).double(), S4D(4, d_state=4, backend="reference").double()
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 11, 4, dtype=torch.float64)
    torch.testing.assert_close(slow(x), fast(x), rtol=1e-10, atol=1e-10)
    assert calls == [1]


def test_everything_works_without_triton_installed():
    """A fresh interpreter in which ``import triton`` fails: the package imports, every layer and the
    model run forward and backward, ``backends()`` says why Triton is missing, and asking for it raises."""
    script = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
        import torch
        import advssm.ssm_layers as sl
        for name in sl.LAYERS:
            model = sl.build_model(sl.ModelConfig(layer=name, d_model=8, d_state=4, n_layers=1, n_classes=3))
            model(torch.rand(2, 1, 4, 4)).sum().backward()
        reason = sl.backends()["selective_scan"]["triton"]["reason"]
        assert "pip install triton (or, in a clone of the repository, pip install './packages/ssm-layers[triton]')" \
            in reason, reason
        u = torch.randn(1, 2, 5)
        try:
            sl.selective_scan(u, u.abs(), -torch.ones(2, 3), torch.randn(1, 3, 5), torch.randn(1, 3, 5),
                              backend="triton")
        except sl.BackendError as exc:
            assert "not importable" in str(exc), exc
        else:
            raise AssertionError("backend='triton' without triton did not raise")
        assert not any(m == "triton" or m.startswith("triton.") for m in sys.modules if sys.modules[m] is not None)
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("ADVSSM_BACKEND", "TRITON_INTERPRET")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]

