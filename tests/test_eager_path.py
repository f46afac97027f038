"""The two routes to the Triton kernels: in eager mode an ``autograd.Function`` (or the launcher
itself when nothing needs a gradient), under tracing the ``torch.library`` custom ops. They agree
in values and in first and second derivatives; eager calls do not touch the custom ops; tracing,
fake tensors and torch.compile still see the ops; launch configurations and compiled-kernel
handles are cached safely.

On CPU the kernels run in the Triton interpreter (conftest sets TRITON_INTERPRET=1); the handle
check runs in a process of its own against the stand-in driver (Triton's real JIT launch path).
"""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import flowtriton
from flowtriton import backend as bk
from flowtriton.kernels import utils as kutils
from flowtriton.ops.units import pixel_scale
from conftest import DEVICE

fg_ops = importlib.import_module("flowtriton.ops.flow_gradient")
warp_ops = importlib.import_module("flowtriton.ops.warp")
ROOT = Path(__file__).resolve().parents[1]
SHAPE = (2, 2, 4, 5)
SCALE = pixel_scale(SHAPE[2], SHAPE[3])

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# name -> (public function on the Triton backend, the custom op it calls under tracing, second
# input is a flow (N, 2, H, W) rather than an image)
ROUTES = {
    "warp-zeros": (lambda a, b: flowtriton.warp(a, b, "zeros", backend="triton"),
                   lambda a, b: warp_ops.warp_op(a, b, "zeros"), True),
    "warp-border": (lambda a, b: flowtriton.warp(a, b, "border", backend="triton"),
                    lambda a, b: warp_ops.warp_op(a, b, "border"), True),
    "warp-reflection": (lambda a, b: flowtriton.warp(a, b, "reflection", backend="triton"),
                        lambda a, b: warp_ops.warp_op(a, b, "reflection"), True),
    "flow_gradient": (lambda a, b: flowtriton.flow_gradient(a, b, "central", backend="triton", units="normalized"),
                      lambda a, b: fg_ops.flow_gradient_op(a, b, "central", *SCALE), False),
    "flow_gradient_penalty": (lambda a, b: flowtriton.flow_gradient_penalty(a, b, "forward", backend="triton",
                                                                            units="normalized"),
                              lambda a, b: fg_ops.penalty_op(a, b, "forward", *SCALE), False),
    "flow_jvp": (lambda a, b: flowtriton.flow_jvp(a, b, "central", backend="triton"),
                 lambda a, b: fg_ops.flow_jvp_op(a, b, "central", 1.0, 1.0), True),
}
EAGER_FUNCTIONS = {"warp": "WarpFunctionBackward", "flow_gradient": "FlowGradientFunctionBackward",
                   "flow_gradient_penalty": "FlowGradientPenaltyFunctionBackward",
                   "flow_jvp": "FlowJVPFunctionBackward"}


def _inputs(second_is_flow, seed=0, requires_grad=True):
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = SHAPE
    first = torch.rand(SHAPE, generator=gen, dtype=torch.float64)
    if second_is_flow:
        second = torch.rand(n, 2, h, w, generator=gen, dtype=torch.float64) * 4 - 2
    else:
        second = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    return first.to(DEVICE).requires_grad_(requires_grad), second.to(DEVICE).requires_grad_(requires_grad)


def _first_and_second(fn, first, second):
    """Value, the gradient of a weighted sum w.r.t. both inputs (with a graph), and the gradient of
    a weighted sum of that gradient (second derivatives: Hessian-vector products)."""
    gen = torch.Generator().manual_seed(7)
    out = fn(first, second)
    weights = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
    grads = torch.autograd.grad((out * weights).sum(), (first, second), create_graph=True)
    vs = [torch.randn(g.shape, generator=gen, dtype=g.dtype).to(g.device) for g in grads]
    second_order = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vs)), (first, second),
                                       allow_unused=True, materialize_grads=True)
    return out, grads, second_order


@pytest.mark.parametrize("name", list(ROUTES))
def test_eager_and_traced_routes_agree_to_second_order(name):
    public, op, second_is_flow = ROUTES[name]
    first, second = _inputs(second_is_flow)
    eager = _first_and_second(public, first, second)
    traced = _first_and_second(op, first, second)
    assert type(eager[0].grad_fn).__name__ == EAGER_FUNCTIONS[name.split("-")[0]]
    assert "flowtriton" in type(traced[0].grad_fn).__name__  # GeneratedBackwardFor_flowtriton_...
    tol = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(eager[0], traced[0], **tol)
    for a, b in zip(eager[1], traced[1]):
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(eager[2], traced[2]):
        torch.testing.assert_close(a, b, **tol)
    assert any(g.abs().sum() > 0 for g in eager[2])


def _flowtriton_ops_run(fn) -> set:
    """Names of the flowtriton custom ops the dispatcher ran (profiler events) while ``fn()`` ran."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("flowtriton::")}


@pytest.mark.parametrize("name", list(ROUTES))
def test_eager_calls_do_not_go_through_the_custom_ops(name, monkeypatch):
    public, op, second_is_flow = ROUTES[name]
    first, second = _inputs(second_is_flow)
    assert _flowtriton_ops_run(lambda: _first_and_second(public, first, second)) == set()
    assert _flowtriton_ops_run(lambda: public(first.detach(), second.detach())) == set()
    assert _flowtriton_ops_run(lambda: _first_and_second(op, first, second))  # the traced route does
    # And by mocking: with every custom op replaced by one that raises, eager calls still run.
    def refuse(*args, **kwargs):
        raise AssertionError("an eager call reached a custom op")

    for module, names in ((warp_ops, ("warp_op", "warp_image_grad", "warp_flow_grad", "_warp_gather",
                                      "_warp_grad_flow", "_warp_scatter")),
                          (fg_ops, ("flow_gradient_op", "flow_jvp_op", "image_vjp_op", "penalty_op",
                                    "_penalty_grad_wrt_grad", "_penalty_grad_wrt_image"))):
        for attr in names:
            monkeypatch.setattr(module, attr, refuse)
    _first_and_second(public, first, second)
    (g,) = torch.autograd.grad(public(first, second).sum(), second)  # no create_graph: the launchers
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("name", ["warp-border", "flow_gradient_penalty"])
def test_no_grad_calls_return_plain_tensors(name):
    public, _, second_is_flow = ROUTES[name]
    first, second = _inputs(second_is_flow, requires_grad=False)
    out = public(first, second)
    assert out.grad_fn is None and not out.requires_grad
    first.requires_grad_(True)
    with torch.no_grad():
        out = public(first, second)
    assert out.grad_fn is None and not out.requires_grad
    torch.testing.assert_close(out, public(first.detach(), second))


class _RecordingBackend:
    """A torch.compile backend that records the ops in the graph and runs it as it is."""

    def __init__(self):
        self.targets = []

    def __call__(self, gm, example_inputs):
        self.targets += [str(node.target) for node in gm.graph.nodes if node.op == "call_function"]
        return gm.forward


@pytest.mark.parametrize("name, op_name", [("warp-border", "flowtriton.warp"),
                                           ("flow_gradient", "flowtriton.flow_gradient"),
                                           ("flow_gradient_penalty", "flowtriton.flow_gradient_penalty"),
                                           ("flow_jvp", "flowtriton.flow_jvp")])
def test_torch_compile_sees_each_public_function_as_its_op(name, op_name):
    public, _, second_is_flow = ROUTES[name]
    first, second = _inputs(second_is_flow)
    torch._dynamo.reset()
    backend = _RecordingBackend()
    compiled = torch.compile(lambda a, b: public(a, b).sin().sum(), fullgraph=True, backend=backend)
    got = compiled(first, second)
    want = public(first, second).sin().sum()
    assert any(t.startswith(op_name + ".") for t in backend.targets), backend.targets
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got, (first, second)), torch.autograd.grad(want, (first, second))):
        torch.testing.assert_close(a, b)


def test_fake_tensors_take_the_custom_ops():
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    with FakeTensorMode():
        image, flow = torch.rand(2, 3, 4, 5), torch.zeros(2, 2, 4, 5)
        outs = {"warp": flowtriton.warp(image, flow, backend="triton"),
                "penalty": flowtriton.flow_gradient_penalty(image, image, backend="triton"),
                "flow_gradient": flowtriton.flow_gradient(image, image, backend="triton"),
                "flow_jvp": flowtriton.flow_jvp(image, flow, backend="triton")}
    assert all(isinstance(out, FakeTensor) for out in outs.values())
    assert {k: tuple(v.shape) for k, v in outs.items()} == {
        "warp": (2, 3, 4, 5), "penalty": (2,), "flow_gradient": (2, 2, 4, 5), "flow_jvp": (2, 3, 4, 5)}


def test_traced_says_when_the_custom_op_is_needed(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(2)
    assert not bk.traced(x, x) and not bk.traced(torch.nn.Parameter(x))
    with FlopCounterMode(display=False):
        assert bk.traced(x)
    with FakeTensorMode():
        assert bk.traced(torch.zeros(2))
    seen = []
    torch.func.grad(lambda t: seen.append(bk.traced(t)) or t.sum())(x)
    assert seen == [True]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert bk.traced(x)


class _Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, factor):
        ctx.factor = factor
        return a * b * factor

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, grad * ctx.factor, None


def test_eager_apply_is_function_apply(monkeypatch):
    a = torch.rand(3, requires_grad=True)
    b = torch.rand(3)
    fast = bk.eager_apply(_Scale)
    assert fast is not _Scale.apply
    out = fast(a, b, 2.0)
    assert type(out.grad_fn).__name__ == "_ScaleBackward"
    torch.testing.assert_close(out, _Scale.apply(a, b, 2.0))
    (g,) = torch.autograd.grad(out.sum(), a)
    torch.testing.assert_close(g, torch.full_like(a, 2.0))
    monkeypatch.setattr(bk, "_raw_apply", None)  # a torch without the internals: the public apply
    assert bk.eager_apply(_Scale) == _Scale.apply


def test_launch_configurations_are_cached_per_shape_dtype_and_mode():
    from flowtriton.kernels import warp as kw

    image, flow = torch.rand(1, 2, 5, 7, device=DEVICE), torch.zeros(1, 2, 5, 7, device=DEVICE)
    kw.warp_forward(image, flow, "zeros")
    key = (kw._PLAIN_GATHER, image.shape, image.dtype, "zeros", None)
    cfg = kutils._configs[key]
    kw.warp_forward(image, flow, "zeros")
    assert kutils._configs[key] is cfg and cfg.kernel is kw._warp_gather_kernel
    assert cfg.constexprs["PAD"] == 0 and cfg.scalars[:3] == (2, 5, 7)
    kw.warp_forward(image, flow, "border")
    kw.warp_forward(image.double(), flow.double(), "zeros")
    with kutils.forced_block_size(16):
        kw.warp_forward(image, flow, "zeros")
        forced = kutils._configs[(kw._PLAIN_GATHER, image.shape, image.dtype, "zeros", 16)]
    assert forced is not cfg and forced.constexprs["BLOCK"] == 16 and forced.grid == (3,)
    assert (kw._PLAIN_GATHER, image.shape, image.dtype, "border", None) in kutils._configs
    assert (kw._PLAIN_GATHER, image.shape, torch.float64, "zeros", None) in kutils._configs


def test_launch_configuration_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(kutils, "_configs", {})
    monkeypatch.setattr(kutils, "MAX_CONFIGS", 3)
    made = [kutils.cached_config(i, lambda i=i: i) for i in range(5)]
    assert made == list(range(5)) and len(kutils._configs) <= 3


def _run_handles_check(**env_changes):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(env_changes)
    return subprocess.run([sys.executable, str(ROOT / "tests" / "check_kernel_handles.py")], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_cached_kernel_handles_launch_what_the_jit_would():
    """tests/check_kernel_handles.py: every launcher variant, dtype, mode and alignment reaches the
    (stand-in) C launcher with the same compiled kernel and arguments through a cached handle as
    through Triton's JIT; debug changes and launch hooks are honoured."""
    proc = _run_handles_check()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().startswith("OK ") and int(proc.stdout.split()[1]) >= 300, proc.stdout
    off = _run_handles_check(FLOWTRITON_KERNEL_HANDLES="0")
    assert off.returncode == 0 and off.stdout.strip() == "HANDLES OFF", off.stdout + off.stderr


def test_handles_are_off_in_the_interpreter():
    if kutils.interpreted():
        assert kutils.USE_HANDLES is False


def test_the_custom_ops_check_their_inputs():
    """The launchers trust their callers; the ops torch.ops exposes are entries of their own."""
    image, flow = torch.rand(2, 3, 4, 5, device=DEVICE), torch.zeros(2, 2, 4, 6, device=DEVICE)
    with pytest.raises(ValueError, match="flow shape"):
        torch.ops.flowtriton.warp(image, flow, "zeros")
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        torch.ops.flowtriton.warp_image_grad(flow[..., :5], image, "wrap")
    with pytest.raises(ValueError, match="grad_out shape"):
        torch.ops.flowtriton.warp_flow_grad(image, flow[..., :5], image[:, :2], "zeros")
    with pytest.raises(ValueError, match="grad_image shape"):
        torch.ops.flowtriton.flow_gradient_penalty(image, image[:, :2], "forward", 1.0, 1.0)
    with pytest.raises(ValueError, match="scheme must be one of"):
        torch.ops.flowtriton.flow_gradient(image, image, "backward", 1.0, 1.0)
    with pytest.raises(ValueError, match="field shape"):
        torch.ops.flowtriton.flow_jvp(image, flow, "forward", 1.0, 1.0)
    with pytest.raises(TypeError, match="field dtype"):
        torch.ops.flowtriton.image_vjp(image, flow[..., :5].double(), "central", 1.0, 1.0)
