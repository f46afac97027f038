"""Compile every Triton kernel specialization the launchers use to real GPU binaries (no GPU needed).

Run in a process WITHOUT TRITON_INTERPRET (the interpreter replaces @triton.jit functions, and
compiling needs the real JITFunction). Each module of flowtriton.kernels that defines
``compile_specializations()`` returns (kernel, signature, constexprs) triples; every triple is
compiled to a cubin for each target. Prints one line per module and exits non-zero on failure.

    python tests/compile_kernels.py [--arch 80 90]
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET to compile kernels", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import flowtriton.kernels as pkg

    total, failures = 0, []
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        specs = getattr(module, "compile_specializations", None)
        if specs is None:
            continue
        start, count = time.time(), 0
        for kernel, signature, constexprs in specs():
            for arch in args.arch:
                try:
                    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                                              target=GPUTarget("cuda", arch, 32))
                    assert len(compiled.asm["cubin"]) > 0, "empty cubin"
                    count += 1
                except Exception as exc:  # report every failure, not just the first
                    cause = exc.__cause__ or exc
                    failures.append(f"{info.name}.{kernel.__name__} sm_{arch} {constexprs}: "
                                    f"{type(cause).__name__}: {str(cause)[:300]}")
        total += count
        print(f"{info.name}: {count} cubins in {time.time() - start:.1f}s")
    for line in failures:
        print("FAILED", line)
    print(f"compiled {total} cubins, {len(failures)} failures")
    return 1 if failures or total == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
