"""Cached compiled-kernel handles launch exactly what Triton's JIT would: run on CPU, without
TRITON_INTERPRET, against the stand-in driver of ``benchmarks/standin_driver.py`` (Triton's real
JIT launch path, compilation and the C launch stubbed; each compilation gets its own function
handle, so a launch names the specialization it runs).

For every launcher variant, dtype, padding mode / scheme, an aligned and an unaligned layout, and
coefficient strides 0, 1 and 3, the launch is made three times: through the JIT with handles off,
then twice with handles on (the first fills the handle cache, the second must use it). All three
must reach the C launcher with the same compiled function, grid and arguments, and the third must
not enter ``JITFunction.run``. Then: changing Triton's debug knob selects a new compilation, a
launch-enter hook sees every handle launch, and FLOWTRITON_KERNEL_HANDLES=0 (checked by the test
that runs this) turns handles off. Prints ``OK <n launches checked>``.

    python tests/check_kernel_handles.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _describe(args, inputs):
    """Arguments as comparable values: input tensors by position, new tensors by dtype, shape and
    alignment, scalars by value."""
    import torch

    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            index = next((i for i, t in enumerate(inputs) if t is a), None)
            out.append(("in", index) if index is not None else ("new", a.dtype, tuple(a.shape), a.data_ptr() % 16))
        else:
            out.append((type(a).__name__, a))
    return tuple(out)


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import standin_driver

    standin_driver.install()
    import torch
    from triton import knobs
    from triton.runtime.jit import JITFunction

    from flowtriton.kernels import flow_gradient as kfg
    from flowtriton.kernels import utils as ku
    from flowtriton.kernels import warp as kw

    if not ku.USE_HANDLES:
        print("HANDLES OFF")
        return 0
    jit_runs = [0]
    original_run = JITFunction.run

    def counting_run(self, *args, **kwargs):
        jit_runs[0] += 1
        return original_run(self, *args, **kwargs)

    JITFunction.run = counting_run

    def tensor(shape, dtype, offset):
        flat = torch.randn(int(torch.tensor(shape).prod()) + offset).to(dtype)
        return flat[offset:].view(shape)

    cases = []
    layouts = [(dtype, offset, (2, 3, 5, 7)) for dtype in (torch.float32, torch.float64, torch.float16)
               for offset in (0, 1)]  # offset 1: pointers not 16-byte aligned
    layouts.append((torch.float32, 0, (1, 1, 4, 1)))  # integer arguments equal to 1: constexprs to Triton
    for dtype, offset, (n, c, h, w) in layouts:
        x, y = tensor((n, c, h, w), dtype, offset), tensor((n, c, h, w), dtype, offset)
        f, t = tensor((n, 2, h, w), dtype, offset), tensor((n, 2, h, w), dtype, offset)
        for mode in ("zeros", "border", "reflection"):
            cases += [
                ((x, f), lambda x=x, f=f, m=mode: kw.warp_forward(x, f, m)),
                ((f, x, t), lambda x=x, f=f, t=t, m=mode: kw.warp_gather(f, m, tangent_src=x, tangent=t)),
                ((f, x, y, t), lambda x=x, y=y, f=f, t=t, m=mode: kw.warp_gather(f, m, value_src=y, tangent_src=x,
                                                                                  tangent=t)),
                ((f, x), lambda x=x, f=f, m=mode: kw.warp_gather(f, m, value_src=x)),
                ((f, y, x), lambda x=x, y=y, f=f, m=mode: kw.warp_grad_flow(f, y, m, src=x)),
                ((f, y, x, t), lambda x=x, y=y, f=f, t=t, m=mode: kw.warp_grad_flow(f, y, m, cross_src=x,
                                                                                     tangent=t)),
                ((f, y, x, t), lambda x=x, y=y, f=f, t=t, m=mode: kw.warp_grad_flow(f, y, m, src=x, cross_src=y,
                                                                                     tangent=t)),
                ((f, y), lambda y=y, f=f, m=mode: kw.warp_scatter(f, y, m)),
                ((f, y, t), lambda y=y, f=f, t=t, m=mode: kw.warp_scatter(f, y, m, tangent=t)),
            ]
        coefs = (torch.ones(n, dtype=dtype), torch.ones((), dtype=dtype).expand(n),
                 torch.ones(3 * n, dtype=torch.float32)[::3])
        for scheme in ("forward", "central"):
            cases += [
                ((x, y), lambda x=x, y=y, s=scheme: kfg.penalty(x, y, s, (1.0, 1.0))),
                ((x, y), lambda x=x, y=y, s=scheme: kfg.penalty(x, y, s, (3.0, 2.0))),
                ((x, y), lambda x=x, y=y, s=scheme: kfg.flow_gradient(x, y, s, (1.0, 1.0))),
                ((x, f), lambda x=x, f=f, s=scheme: kfg.flow_jvp(x, s, field=f)),
                ((y, f), lambda y=y, f=f, s=scheme: kfg.image_vjp(y, f, s)),
            ]
            for coef in coefs:
                cases += [
                    ((x, y, coef), lambda x=x, y=y, k=coef, s=scheme: kfg.penalty_grad(x, y, k, s, (1.0, 1.0))),
                    ((x, f, coef), lambda x=x, f=f, k=coef, s=scheme: kfg.flow_jvp(x, s, field=f, coef=k)),
                    ((x, y, coef), lambda x=x, y=y, k=coef, s=scheme: kfg.flow_jvp(x, s, grad_image=y, coef=k,
                                                                                  coef_scale=2.0)),
                    ((y, f, coef), lambda y=y, f=f, k=coef, s=scheme: kfg.image_vjp(y, f, s, coef=k,
                                                                                   coef_scale=2.0)),
                ]

    def launches(fn, inputs):
        standin_driver.RECORD = []
        fn()
        record, standin_driver.RECORD = standin_driver.RECORD, None
        assert len(record) == 1, record
        function, grid, args = record[0]
        return function, grid, _describe(args, inputs)

    checked = 0
    for inputs, fn in cases:
        ku.USE_HANDLES = False
        jit = launches(fn, inputs)
        ku.USE_HANDLES = True
        first = launches(fn, inputs)
        before = jit_runs[0]
        second = launches(fn, inputs)
        assert jit_runs[0] == before, "the second launch went through the JIT, not the cached handle"
        assert jit == first == second, (jit, first, second)
        checked += 1

    # The guard discriminates: an unaligned or a float64 launch of the same configuration runs
    # another specialization (so the equalities above were not trivially true).
    x, f = tensor((2, 3, 5, 7), torch.float32, 0), tensor((2, 2, 5, 7), torch.float32, 0)
    plain = launches(lambda: kw.warp_forward(x, f, "zeros"), (x, f))
    xu, fu = tensor((2, 3, 5, 7), torch.float32, 1), tensor((2, 2, 5, 7), torch.float32, 1)
    assert launches(lambda: kw.warp_forward(xu, fu, "zeros"), (xu, fu))[0] is not plain[0]
    xd, fd = x.double(), f.double()
    assert launches(lambda: kw.warp_forward(xd, fd, "zeros"), (xd, fd))[0] is not plain[0]

    # A new debug setting is a new specialization: the handle must not be reused.
    knobs.runtime.debug = True
    try:
        before = jit_runs[0]
        debug = launches(lambda: kw.warp_forward(x, f, "zeros"), (x, f))
        assert jit_runs[0] == before + 1 and debug[0] is not plain[0], (plain, debug)
        again = launches(lambda: kw.warp_forward(x, f, "zeros"), (x, f))
        assert again[0] is debug[0]
    finally:
        knobs.runtime.debug = False
    assert launches(lambda: kw.warp_forward(x, f, "zeros"), (x, f))[0] is plain[0]

    # A pre-run hook on the kernel sends its launches back through the JIT, which calls it.
    calls = []
    kw._warp_gather_kernel.add_pre_run_hook(lambda *a, **k: calls.append(1))
    try:
        before = jit_runs[0]
        kw.warp_forward(x, f, "zeros")
        assert jit_runs[0] == before + 1 and calls == [1]
    finally:
        kw._warp_gather_kernel.pre_run_hooks.clear()

    # Launch hooks see handle launches too, with the kernel's launch metadata.
    seen = []
    hook = lambda metadata: seen.append(metadata.get()["name"])  # noqa: E731
    knobs.runtime.launch_enter_hook.add(hook)
    try:
        before = jit_runs[0]
        kw.warp_forward(x, f, "zeros")
        assert jit_runs[0] == before and seen == ["_warp_gather_kernel"], seen
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    print(f"OK {checked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
