"""The backend choice: explicit, overridable, and never silently wrong."""

import pytest
import torch

from hfzoo.ops import dispatch
from hfzoo.ops.dispatch import resolve_backend, use_backend
from hfzoo.ops.rmsnorm import rms_norm_gated


def test_auto_runs_reference_on_cpu_even_under_the_interpreter(monkeypatch):
    # auto = Triton on CUDA tensors, reference elsewhere; the interpreter runs kernels only when forced
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.randn(3, 4)
    assert resolve_backend(x) == "reference"
    assert resolve_backend(x, backend="triton") == ("triton" if dispatch.HAS_TRITON else "never")
    with use_backend("triton"):
        assert resolve_backend(x) == "triton"


@pytest.mark.skipif(not dispatch.HAS_TRITON, reason="needs Triton")
def test_auto_on_cpu_launches_no_kernel_and_forced_triton_does(monkeypatch):
    from hfzoo.ops.launch import count_launches, is_interpreted

    x = torch.randn(4, 8)
    with count_launches() as n:
        rms_norm_gated(x, torch.ones(8))
    assert n.total() == 0
    if is_interpreted():
        with count_launches() as n:
            rms_norm_gated(x, torch.ones(8), backend="triton")
        assert n["rmsnorm.fwd"] == 1


def test_cpu_tensors_without_interpreter_use_reference(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert resolve_backend(torch.randn(3)) == "reference"


def test_forcing_triton_where_it_cannot_run_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="triton backend was forced"):
        resolve_backend(torch.randn(3), backend="triton", op="demo")
    monkeypatch.setenv("HFZOO_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        rms_norm_gated(torch.randn(2, 8))


def test_missing_triton_falls_back_or_raises(monkeypatch):
    monkeypatch.setattr(dispatch, "HAS_TRITON", False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend(torch.randn(3)) == "reference"
    with use_backend("triton"), pytest.raises(RuntimeError, match="not installed"):
        resolve_backend(torch.randn(3))
    with pytest.raises(RuntimeError, match="not installed"):
        resolve_backend(torch.randn(3), backend="triton")


def test_overrides_in_order_of_precedence(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("HFZOO_BACKEND", "reference")
    x = torch.randn(2)
    assert resolve_backend(x) == "reference"
    with use_backend("triton"):
        assert resolve_backend(x) == ("triton" if dispatch.HAS_TRITON else "never")
        assert resolve_backend(x, backend="reference") == "reference"
    assert resolve_backend(x) == "reference"
    monkeypatch.setenv("HFZOO_BACKEND", "triton")
    with use_backend("auto"):
        assert resolve_backend(x) == "reference"


def test_bad_backend_names_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="must be one of"):
        resolve_backend(torch.randn(2), backend="cuda")
    with pytest.raises(ValueError, match="must be one of"):
        with use_backend("fast"):
            pass
    monkeypatch.setenv("HFZOO_BACKEND", "gpu")
    with pytest.raises(ValueError, match="HFZOO_BACKEND"):
        resolve_backend(torch.randn(2))


def test_hfzoo_imports_without_triton():
    """A subprocess where `import triton` fails still imports hfzoo and runs ops on the reference path."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'triton' or name.startswith('triton.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, hfzoo\n"
        "from hfzoo.ops.rmsnorm import rms_norm_gated\n"
        "from hfzoo.ops.triton_shim import HAS_TRITON\n"
        "assert not HAS_TRITON\n"
        "y = rms_norm_gated(torch.randn(2, 8), torch.ones(8))\n"
        "print('ok', tuple(y.shape))\n"
    )
    env = {**__import__("os").environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ok (2, 8)" in out.stdout


@pytest.mark.skipif(not dispatch.HAS_TRITON, reason="needs Triton")
def test_ops_without_gradients_run_their_kernels_without_an_autograd_node():
    from hfzoo.ops.geglu import geglu
    from hfzoo.ops.group_rational import group_rational
    from hfzoo.ops.launch import count_launches, is_interpreted

    if not is_interpreted():
        pytest.skip("forcing the Triton backend on CPU tensors needs TRITON_INTERPRET=1")
    torch.manual_seed(0)
    x = torch.randn(6, 16)
    a, b = torch.randn(1, 6), torch.randn(8, 4) * 0.1
    cases = [lambda t: group_rational(t, a, b, 8, backend="triton"),
             lambda t: rms_norm_gated(t, torch.ones(16), t * 0.5, backend="triton"),
             lambda t: geglu(t, backend="triton")]
    for op in cases:
        xg = x.clone().requires_grad_()
        with_node = op(xg)
        assert with_node.grad_fn is not None
        for mode in (torch.no_grad(), torch.enable_grad()):   # no_grad, and grad mode with nothing to differentiate
            with mode, count_launches() as n:
                plain = op(x)
            assert plain.grad_fn is None and not plain.requires_grad and n.total() >= 1
            torch.testing.assert_close(plain, with_node.detach(), rtol=0, atol=0)
