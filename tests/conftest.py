"""Test setup. CPU runs exercise the Triton kernels through Triton's interpreter, which must be switched on
before any kernel module (or hfzoo) is imported; on a CUDA machine the kernels run natively.

The ``auto`` backend runs the reference on CPU tensors (also under the interpreter), so a CPU test that means
to run kernels forces them: ``backend="triton"`` / ``use_backend("triton")``, or the ``kernels`` marker (or a
name containing ``kernel_path``), which runs the whole test under ``use_backend("triton")`` when the
interpreter is on and fails it if no kernel was launched (``hfzoo.ops.launch.count_launches``). Inside such
a test, ``use_backend("reference")`` still selects the reference for the comparison.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "kernels: runs the ops' Triton kernels (forced under the CPU interpreter; "
                                       "fails if none launched)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (run `make test-gpu` on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def wants_kernels(item) -> bool:
    return "kernels" in item.keywords or "kernel_path" in item.name


@pytest.fixture(autouse=True)
def _kernel_path(request):
    """Under the interpreter, run ``kernels``-marked tests on the Triton backend and check kernels really ran."""
    from hfzoo.ops.launch import count_launches, is_interpreted
    from hfzoo.ops.triton_shim import HAS_TRITON

    if not (wants_kernels(request.node) and is_interpreted() and HAS_TRITON and "gpu" not in request.keywords):
        yield
        return
    from hfzoo.ops.dispatch import use_backend

    with use_backend("triton"), count_launches() as launches:
        yield
    assert launches.total() > 0, f"{request.node.name} is a kernel-path test but launched no Triton kernel"
