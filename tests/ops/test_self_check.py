"""Kernels that check themselves: "auto" passes over a fused backend whose first run is wrong or
raises (one warning, cached), an explicitly named one raises; a fault that leaves the CUDA
context unusable is one error naming it, not a fallback that fails the same way. Faulty
stand-ins of the cpp record play the broken GPU kernels."""

import dataclasses
import warnings

import pytest
import torch

import reference
from helpers import assert_close
from stablerep_fast import multipos_clip_loss, multipos_con_loss
from stablerep_fast.ops import dispatch, self_check
from stablerep_fast.ops.multipos_ext import CPP

pytestmark = pytest.mark.skipif(
    CPP.unavailable(torch.device("cpu"), torch.float32) is not None, reason="the stand-ins wrap the cpp kernels"
)

CPU = torch.device("cpu")
N, D = 300, 12  # 300^2 logits: above cpp's auto threshold


LAUNCH_ERROR = "CUDA error: too many resources requested for launch"  # the context stays usable
# A fault the way torch reports it (torch >= 2.8: torch.AcceleratorError, a RuntimeError).
FAULT = ("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be asynchronously "
         "reported at some other API call, so the stacktrace below might be incorrect.")  # fmt: skip


def _launch_error(*args):
    raise RuntimeError(LAUNCH_ERROR)


def _fault(*args):
    raise RuntimeError(FAULT)


FAULTY = {
    # Off in the forward: the loss is wrong.
    "wrong-lse": lambda calls: dict(lse=lambda *a: calls.append("lse") or CPP.lse(*a) + 0.25),
    # Right loss, wrong gradient: only the backward's kernel is off (by 3%: above TF32 rounding).
    "wrong-grad": lambda calls: dict(weighted_sum=lambda *a: calls.append("ws") or 1.03 * CPP.weighted_sum(*a)),
    # A kernel that cannot launch.
    "raises": lambda calls: dict(lse=lambda *a: calls.append("lse") or _launch_error()),
    # Right on the odd shape, wrong on the shape training launches (N a multiple of 16): a
    # specialisation of its own in Triton.
    "wrong-when-aligned": lambda calls: dict(
        lse=lambda a, *r: calls.append("lse") or CPP.lse(a, *r) + (0.25 if a.shape[0] % 16 == 0 else 0.0)
    ),
    # A kernel that faults: the backward's kernel reads out of bounds.
    "faults": lambda calls: dict(weighted_sum=lambda *a: calls.append("ws") or _fault()),
}


@pytest.fixture
def faulty(request, monkeypatch):
    """Installs the stand-in ``request.param`` as "faulty", first in the CPU's auto order; fresh verdicts."""
    calls = []
    record = dataclasses.replace(CPP, name="faulty", **FAULTY[request.param](calls))
    monkeypatch.setitem(dispatch._RECORDS, "faulty", record)
    monkeypatch.setattr(dispatch, "BACKENDS", (*dispatch.BACKENDS, "faulty"))
    monkeypatch.setitem(dispatch.AUTO_ORDER, "cpu", ("faulty", "cpp"))
    monkeypatch.setattr(dispatch, "_VERDICTS", {})
    monkeypatch.setattr(dispatch, "_WARNED", set())
    return calls


def _feats():
    return torch.randn(N, D, dtype=torch.float64, requires_grad=True), torch.arange(N) // 6


@pytest.mark.parametrize(
    "faulty,reason",
    [("wrong-lse", "image-image loss off by"), ("wrong-grad", "image-image d rows off by"),
     ("raises", f"RuntimeError: {LAUNCH_ERROR}"), ("wrong-when-aligned", "image-image loss off by")],
    indirect=["faulty"],
)
def test_auto_warns_once_and_falls_back_to_the_next_backend(faulty, reason):
    feats, labels = _feats()
    with pytest.warns(RuntimeWarning, match="backend 'faulty' failed its check on cpu") as record:
        loss = multipos_con_loss(feats, labels, 0.1)
    assert len(record) == 1
    assert "D = 12" in str(record[0].message) and reason in str(record[0].message)
    assert dispatch.resolve_backend("auto", CPU, torch.float64, N * N, D).name == "cpp"
    (grad,) = torch.autograd.grad(loss, feats)
    f = feats.detach().clone().requires_grad_()
    ref = reference.multipos_con_loss(f, labels, 0.1)
    ref.backward()
    assert_close(loss, ref, rtol=1e-10, atol=1e-12, name="loss after the fallback")
    assert_close(grad, f.grad, rtol=1e-9, atol=1e-12, name="grad after the fallback")

    # Cached: neither a second check (the stand-in is never called again) nor a second warning.
    checked = len(faulty)
    assert checked > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        multipos_con_loss(feats, labels, 0.1).backward()
        v, t = torch.randn(N, D, dtype=torch.float64), torch.randn(20, D, dtype=torch.float64)
        multipos_clip_loss(v, t, labels, torch.arange(20), 10.0)  # same device, dtype and D
    assert len(faulty) == checked


@pytest.mark.parametrize("faulty", ["wrong-lse", "wrong-grad", "raises"], indirect=True)
def test_named_backend_raises(faulty):
    feats, labels = _feats()
    with pytest.raises(RuntimeError, match="backend 'faulty' failed its check on cpu"):
        multipos_con_loss(feats, labels, 0.1, backend="faulty")


@pytest.mark.parametrize("faulty", ["wrong-grad"], indirect=True)
def test_reasons_name_what_is_off(faulty):
    reason = self_check.failure(dispatch._RECORDS["faulty"], CPU, torch.float32, "ieee", 5)
    assert reason is not None and "image-image d rows off by" in reason
    assert self_check.failure(CPP, CPU, torch.float32, "ieee", 5) is None
    raising = dataclasses.replace(CPP, lse=_launch_error)
    assert self_check.failure(raising, CPU, torch.float32, "ieee", 5) == f"RuntimeError: {LAUNCH_ERROR}"


@pytest.mark.parametrize("faulty", ["wrong-when-aligned"], indirect=True)
def test_the_shape_training_launches_is_checked_too(faulty):
    """A kernel right on the odd shape but wrong where N is a multiple of 16 (what training
    launches) is caught, at that shape."""
    small, aligned = self_check.SHAPES
    assert small[0] % 16 and small[1] % 16 and not aligned[0] % 16 and not aligned[1] % 16
    assert aligned[0] > 128 and aligned[1] > 64  # several row tiles (64, 128) and column steps (64)
    reason = self_check.failure(dispatch._RECORDS["faulty"], CPU, torch.float32, "ieee", 5)
    assert reason.startswith("image-image loss off by") and reason.endswith(f"at {aligned[0]} x {aligned[1]}")


@pytest.mark.parametrize("faulty", ["faults"], indirect=True)
@pytest.mark.parametrize("named", [False, True])
def test_a_fault_that_loses_the_cuda_context_is_one_error_not_a_fallback(faulty, named):
    """After an illegal memory access every CUDA call fails, the fallback's too: the check says
    so in one line with what to do, whether "auto" or the backend's name was asked for."""
    feats, labels = _feats()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "uses the next one" warning
        with pytest.raises(self_check.CudaContextLost) as caught:
            multipos_con_loss(feats, labels, 0.1, backend="faulty" if named else "auto")
    message = str(caught.value)
    assert "\n" not in message and caught.value.__cause__ is None and caught.value.__suppress_context__
    assert message.startswith("loss backend 'faulty' faulted in its first-use check on cpu with torch.float64, D = 12")
    assert "(RuntimeError: CUDA error: an illegal memory access was encountered)" in message
    assert "leaves the CUDA context unusable" in message and 'restart it with backend="torch"' in message
    assert faulty == ["ws"]  # the first faulting call ended the check: nothing ran after it
    assert "cpp" not in {key[0] for key in dispatch._VERDICTS}  # no fallback was tried


@pytest.mark.parametrize(
    "text", ["CUDA error: misaligned address", "CUDA error: device-side assert triggered",
             "Triton Error [CUDA]: an illegal memory access was encountered", "cudaErrorIllegalAddress"],
)  # fmt: skip
def test_every_context_losing_fault_is_recognised(text):
    def fault(*args):
        raise RuntimeError(text)

    with pytest.raises(self_check.CudaContextLost, match="leaves the CUDA context unusable"):
        self_check.failure(dataclasses.replace(CPP, lse=fault), CPU, torch.float32, "ieee", 5)


@pytest.mark.parametrize("faulty", ["wrong-grad"], indirect=True)
def test_a_new_width_or_dtype_is_checked_again(faulty):
    feats, labels = _feats()
    with pytest.warns(RuntimeWarning):
        multipos_con_loss(feats, labels, 0.1)
    with pytest.warns(RuntimeWarning, match="D = 7"):
        multipos_con_loss(feats[:, :7], labels, 0.1)
    with pytest.warns(RuntimeWarning, match="torch.float32"):
        multipos_con_loss(feats.float(), labels, 0.1)
    faulty_verdicts = {k: v for k, v in dispatch._VERDICTS.items() if k[0] == "faulty"}
    assert len(faulty_verdicts) == 3 and all(faulty_verdicts.values())  # the fallback, cpp, passed each time
    assert all(v == "" for k, v in dispatch._VERDICTS.items() if k[0] == "cpp")


@pytest.mark.parametrize("faulty", ["wrong-lse"], indirect=True)
def test_check_runs_eagerly_while_torch_compile_traces(faulty):
    feats, labels = _feats()
    compiled = torch.compile(lambda f: multipos_con_loss(f, labels, 0.1), fullgraph=True, backend="aot_eager")
    with pytest.warns(RuntimeWarning, match="backend 'faulty' failed its check"):
        loss = compiled(feats)
    assert set(dispatch._VERDICTS.values()) != {""}  # the verdict was reached while tracing
    ref = reference.multipos_con_loss(feats.detach(), labels, 0.1)
    assert_close(loss, ref, rtol=1e-10, atol=1e-12, name="compiled loss after the fallback")


def test_good_backend_passes_and_is_kept(monkeypatch):
    monkeypatch.setattr(dispatch, "_VERDICTS", {})
    feats, labels = _feats()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.resolve_backend("auto", CPU, torch.float64, N * N, D, "tf32").name == "cpp"
    assert dispatch._VERDICTS == {("cpp", "cpu", "torch.float64", "ieee", D): ""}
