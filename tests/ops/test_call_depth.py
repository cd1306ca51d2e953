"""How many calls separate the public losses from their kernels.

Python: a public loss calls ``MultiPosCE.apply``, whose ``forward`` calls a registered kernel op,
whose launcher launches the kernel: three calls, each from one of the package's functions. At
every launch the package's frames on the stack are counted, from the public function's down to
the launcher's; torch's frames in between (``Function.apply``, the custom-op dispatcher) are
not the package's layers and are not counted. The backward's launches are two calls from
``MultiPosCE.backward`` (backward -> op -> launch).

C++: every kernel entry of bindings.cpp is two calls from its kernel (the chains are written
out in bindings.cpp). Nothing CUDA runs here, so that is checked on the sources: each hop's
function body (comments stripped) must call the next hop itself.
"""

import re
import sys
from pathlib import Path

import pytest
import torch

import stablerep_fast
from stablerep_fast import _ext, multipos_clip_loss, multipos_con_loss
from stablerep_fast.ops.multipos_ext import CPP

PACKAGE = Path(stablerep_fast.__file__).resolve().parent
CSRC = Path(__file__).resolve().parents[2] / "csrc"
MAX_PYTHON_CALLS = 3  # public function -> forward (via apply) -> kernel op's launcher -> launch
MAX_BACKWARD_CALLS = 2  # backward -> kernel op's launcher -> launch

N, D = 300, 16  # 300^2 logits: "auto" takes cpp too


def _package_frames(frame) -> list[str]:
    """Names of the package's functions on the stack, outermost first, from ``frame`` up."""
    names = []
    while frame is not None:
        if Path(frame.f_code.co_filename).resolve().is_relative_to(PACKAGE):
            names.append(frame.f_code.co_name)
        frame = frame.f_back
    return names[::-1]


def _launch_stacks(fn) -> list[list[str]]:
    """The package's frames at each call of a cpp kernel entry of ``_C`` while ``fn`` runs."""
    ext = _ext.extension()
    entries = {ext.multipos_lse, ext.multipos_weighted_sum}
    stacks = []

    def profile(frame, event, arg):
        if event == "c_call" and any(arg is entry for entry in entries):
            stacks.append(_package_frames(frame))

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return stacks


def _calls_below(stack: list[str], caller: str) -> list[str]:
    """The frames from ``caller``'s (the innermost frame of that name) to the launcher's."""
    assert caller in stack, f"{caller} is not on the stack {stack}"
    return stack[len(stack) - 1 - stack[::-1].index(caller):]


@pytest.fixture
def feats():
    f = torch.randn(N, D, requires_grad=True)
    multipos_con_loss(f, torch.arange(N) // 6, backend="cpp")  # the first use runs the self-check
    return f


pytestmark = pytest.mark.skipif(
    CPP.unavailable(torch.device("cpu"), torch.float32) is not None,
    reason=str(CPP.unavailable(torch.device("cpu"), torch.float32)),
)


@pytest.mark.parametrize("backend", ["cpp", "auto"])
def test_con_loss_reaches_the_kernel_in_three_python_calls(feats, backend):
    labels = torch.arange(N) // 6
    stacks = _launch_stacks(lambda: multipos_con_loss(feats, labels, 0.1, backend=backend))
    assert len(stacks) == 1  # the forward's one lse
    chain = _calls_below(stacks[0], "multipos_con_loss")
    assert chain == ["multipos_con_loss", "forward", "lse"]
    assert len(chain) <= MAX_PYTHON_CALLS


def test_clip_loss_reaches_the_kernel_in_three_python_calls(feats):
    text = torch.randn(50, D, requires_grad=True)
    labels = torch.arange(N) // 6
    stacks = _launch_stacks(lambda: multipos_clip_loss(feats, text, labels, torch.arange(50), 10.0, backend="cpp"))
    assert len(stacks) == 2  # lse both ways
    for stack in stacks:
        chain = _calls_below(stack, "multipos_clip_loss")
        assert chain == ["multipos_clip_loss", "forward", "lse"] and len(chain) <= MAX_PYTHON_CALLS


def test_backward_reaches_the_kernel_in_two_python_calls(feats):
    labels = torch.arange(N) // 6
    loss = multipos_con_loss(feats, labels, 0.1, backend="cpp")
    stacks = _launch_stacks(loss.backward)
    assert len(stacks) == 1  # one symmetric weighted_sum
    chain = _calls_below(stacks[0], "backward")
    assert chain == ["backward", "weighted_sum"] and len(chain) <= MAX_BACKWARD_CALLS
    assert stacks[0] == chain  # nothing of the package above the backward


def test_the_count_sees_every_package_frame(monkeypatch):
    # A first use runs the self-check's launches from deep inside the dispatch: counted as such.
    from stablerep_fast.ops import dispatch

    monkeypatch.setattr(dispatch, "_VERDICTS", {})
    labels = torch.arange(N) // 6
    stacks = _launch_stacks(lambda: multipos_con_loss(torch.randn(N, D), labels, 0.1, backend="cpp"))
    checks = [_calls_below(s, "multipos_con_loss") for s in stacks if "failure" in s]
    assert checks, stacks
    for chain in checks:
        assert chain[:4] == ["multipos_con_loss", "_setup", "resolve_backend", "_first_use_failure"]
        assert chain[-2:] in (["forward", "lse"], ["backward", "weighted_sum"]) and len(chain) > MAX_PYTHON_CALLS
    assert _calls_below(stacks[-1], "multipos_con_loss") == ["multipos_con_loss", "forward", "lse"]


def test_triton_launches_are_as_close(monkeypatch):
    # The Triton launchers launch through _launchable(kernel)[grid](...): record who calls that.
    multipos_triton = pytest.importorskip("stablerep_fast.ops.multipos_triton")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if multipos_triton.unavailable(device, torch.float32) is not None:
        pytest.skip(multipos_triton.unavailable(device, torch.float32))
    f = torch.randn(40, 8, device=device, requires_grad=True)
    labels = torch.arange(40, device=device) // 4
    multipos_con_loss(f, labels, 0.1, backend="triton")  # the first use runs the self-check
    stacks = []
    real = multipos_triton._launchable

    class Recording:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            launch = real(self.kernel)[grid]

            def recorded(*args, **kwargs):
                stacks.append(_package_frames(sys._getframe(1)))
                return launch(*args, **kwargs)

            return recorded

    monkeypatch.setattr(multipos_triton, "_launchable", Recording)
    loss = multipos_con_loss(f, labels, 0.1, backend="triton")
    loss.backward()
    assert [_calls_below(stacks[0], "multipos_con_loss"), stacks[1]] == [
        ["multipos_con_loss", "forward", "_lse"], ["backward", "_weighted_sum"]
    ]


# ---- C++: from the pybind entries to the kernels -------------------------------------------------

def _source(path: Path) -> str:
    """The file without // comments (none of the checked code has // inside a string)."""
    return re.sub(r"//[^\n]*", "", path.read_text())


def _body(source: str, header: str) -> str:
    """The brace-delimited body after the first match of the regex ``header``."""
    match = re.search(header, source, re.M)
    assert match, f"no {header!r}"
    start = source.index("{", match.end())
    depth = 0
    for i in range(start, len(source)):
        depth += {"{": 1, "}": -1}.get(source[i], 0)
        if depth == 0:
            return source[start + 1 : i]
    raise AssertionError(f"unbalanced braces after {header!r}")


def _entry(name: str) -> str:
    return _body(_source(CSRC / "bindings.cpp"), rf'm\.def\(\s*"{name}",\s*\[\]\(')


def _cpu_table() -> dict[str, str]:
    """{CpuKernels member: the function of each variant it holds}, from the struct and its initialiser."""
    members = re.findall(r"\(\*(\w+)\)\(", _body(_source(CSRC / "cpu_variants.h"), r"struct CpuKernels\b"))
    values = re.search(r"CpuKernels\s*\{([^}]*)\}", _source(CSRC / "cpu_variants.cpp")).group(1).split(",")
    functions = [v.strip().removeprefix("&ns::") for v in values[1:]]  # after the name
    return dict(zip(members, functions))


@pytest.mark.parametrize(
    "entry,member,source,kernel",
    [
        ("multipos_lse", "multipos_lse", "multipos/multipos_cpu.cpp", r"lse_impl<"),
        ("multipos_weighted_sum", "multipos_weighted_sum", "multipos/multipos_cpu.cpp", r"\bkernel\(p,"),
        ("all_finite", "all_finite", "finite/finite.cpp", r"exponent_never_saturated\("),
    ],
)
def test_cpu_entries_are_two_calls_from_their_kernels(entry, member, source, kernel):
    # Call 1: the entry calls the member of the chosen copy's table ...
    assert re.search(rf"srf::cpu_kernels\(\)\.{member}\(", _entry(entry)), f"{entry} does not call .{member}"
    function = _cpu_table()[member]
    # ... call 2: that function calls the kernel template itself.
    body = _body(_source(CSRC / source), rf"^\w+ {function}\(")
    assert re.search(kernel, body), f"{function} does not call its kernel directly"


def test_weighted_sum_cpu_calls_a_kernel_instantiation():
    # The pointer it calls comes from weighted_sum_kernel, which returns instantiations of the kernel.
    source = _source(CSRC / "multipos" / "multipos_cpu.cpp")
    assert re.search(r"kernel = weighted_sum_kernel<", _body(source, r"^void multipos_weighted_sum_cpu\("))
    picked = _body(source, r"^WeightedSumKernel weighted_sum_kernel\(")
    assert set(re.findall(r"\b(\w+)<T,", picked)) == {"weighted_sum_impl"}


@pytest.mark.parametrize("entry", ["multipos_lse_cuda", "multipos_weighted_sum_cuda"])
def test_cuda_entries_are_two_calls_from_the_launch(entry):
    # Call 1: the entry calls multipos_cuda; call 2: multipos_cuda launches (the only launch site).
    assert re.search(r"srf::multipos_cuda\(", _entry(entry))
    sources = {p.name: _source(p) for p in CSRC.rglob("*.cu")}
    launching = [name for name, text in sources.items() if "<<<" in text]
    assert launching == ["multipos_cuda.cu"]
    assert sources["multipos_cuda.cu"].count("<<<") == 1
    assert "<<<" in _body(sources["multipos_cuda.cu"], r"^void multipos_cuda\(")
