"""A stand-in Triton driver: Triton's real JIT launch path on a machine without a GPU.

``install()`` makes every ``kernel[grid](...)`` launch run what a real launch runs in Python on
the host (argument binding, the specialization key, the kernel-cache lookup, grid
canonicalization, ``launch_metadata``, and the Python half of triton 3.8's ``CudaLauncher``:
scratch allocation, argument hand-over), while two things are stubbed:

* compilation: ``triton.compiler.compile`` returns a :class:`StubKernel` (a ``CompiledKernel``
  with no binary) at once, so the first launch of each specialization costs nothing either;
* the C launch (``driver.utils.launch``): it calls the launch hooks, as the C launcher does, and
  counts the launch per kernel name instead of calling ``cuLaunchKernelEx``.

The seam is the active driver (``triton.runtime.driver.driver.set_active``): the JIT asks it for
the current device, stream and target (sm_90), and the compiled kernel asks it for its launcher.
CPU tensors stand in for CUDA tensors (only their ``data_ptr`` and dtype are read).
TRITON_INTERPRET must be unset before any ``@triton.jit`` function is defined: the interpreter
replaces this whole path.
"""

from __future__ import annotations

import collections
import os
from collections import namedtuple

LAUNCHES: collections.Counter = collections.Counter()  # kernel name -> C launches (stubbed)
#: Set to a list to record every C launch as (function, grid, kernel arguments): ``function`` is
#: the stub compiled kernel's handle, one per compilation (so per specialization).
RECORD: list | None = None
_installed = None


class StubFunction:
    """The "CUfunction" of a stub compiled kernel: its name and a serial number per compilation."""

    __slots__ = ("name", "serial")
    _count = 0

    def __init__(self, name):
        StubFunction._count += 1
        self.name, self.serial = name, StubFunction._count

    def __repr__(self):
        return f"<stub {self.name}#{self.serial}>"


def install():
    """Install the stand-in driver and the compile stub (idempotent); return the driver."""
    global _installed
    if _installed is not None:
        return _installed
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("the stand-in driver needs TRITON_INTERPRET unset (the interpreter replaces the JIT)")
    import triton.compiler as tcompiler
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase
    from triton.backends.nvidia import driver as nvidia_driver
    from triton.compiler.compiler import CompiledKernel
    from triton.runtime.driver import driver as driver_config

    target = GPUTarget("cuda", 90, 32)

    class _Utils:
        @staticmethod
        def launch(gridX, gridY, gridZ, stream, function, coop, pdl, kernel_metadata, launch_metadata,
                   enter_hook, exit_hook, global_scratch, profile_scratch, annotations, signature, args):
            # What the C launcher does around cuLaunchKernelEx: the launch hooks (Python objects).
            if enter_hook is not None:
                enter_hook(launch_metadata)
            LAUNCHES[function.name] += 1  # the launch itself: stubbed
            if RECORD is not None:
                RECORD.append((function, (gridX, gridY, gridZ), args))
            if exit_hook is not None:
                exit_hook(launch_metadata)

    class StandInLauncher(nvidia_driver.CudaLauncher):
        """triton 3.8's ``CudaLauncher`` with its real ``__call__`` (scratch allocation, argument
        hand-over); the set-up that needs the compiled ``cuda_utils`` module (C argument
        annotations) is replaced by plain values, and ``launch`` is the stub above."""

        def __init__(self, src, metadata):
            self.gsan_enabled = False
            self.arg_annotations = self.kernel_signature = None
            self.num_ctas = 1
            self.launch = _Utils.launch
            self.global_scratch_size = self.profile_scratch_size = 0
            self.global_scratch_align = self.profile_scratch_align = 1
            self.launch_cooperative_grid = self.launch_pdl = False

    class StandInDriver(DriverBase):
        """Device 0, stream 0, an sm_90 target; launches through triton 3.8's real ``CudaLauncher``
        (its Python part) with the C entry stubbed."""

        launcher_cls = StandInLauncher
        utils = _Utils()

        @classmethod
        def is_active(cls):
            return False

        def __init__(self):
            super().__init__()
            self.get_current_device = lambda: 0
            self.get_current_stream = lambda device=None: 0
            self.set_current_device = lambda device: None

        def map_python_to_cpp_type(self, ty):
            return nvidia_driver.ty_to_cpp(ty)

        def get_current_target(self):
            return target

        def get_active_torch_device(self):
            import torch

            return torch.device("cpu")

        def get_benchmarker(self):
            raise NotImplementedError("no device to benchmark on")

        def allocate_default_profile_scratch(self, size, alignment, stream):
            return None

    Metadata = namedtuple("Metadata", "name num_warps num_ctas shared global_scratch_size global_scratch_align "
                                      "profile_scratch_size profile_scratch_align launch_cooperative_grid "
                                      "launch_pdl tensordesc_meta instrumentation_mode target")

    class StubKernel(CompiledKernel):
        """A compiled kernel without a binary: real ``launch_metadata`` and ``run`` (the
        ``CudaLauncher``), no module to load."""

        def __init__(self, src, options):
            name = src.fn.__name__
            self.metadata = Metadata(name, options.get("num_warps", 4), 1, 0, 0, 1, 0, 1, False, False, None, "",
                                     target)
            self.packed_metadata = (self.metadata.num_warps, 1, 0)
            self.src, self.hash, self.name, self.asm, self.metadata_group = src, name, name, {}, {}
            self.kernel = b""
            self.module, self.function = object(), StubFunction(name)  # "loaded": _init_handles returns at once
            self._run = StandInDriver.launcher_cls(src, self.metadata)

        def __del__(self):
            pass

    def compile(src, target=None, options=None, _env_vars=None):  # noqa: A001 - the name Triton looks up
        return StubKernel(src, options or {})

    tcompiler.compile = compile
    driver = StandInDriver()
    driver_config.set_active(driver)
    _installed = driver
    return driver
