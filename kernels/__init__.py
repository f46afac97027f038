"""Triton kernels and their launchers (installed as ``flowtriton.kernels``).

Tensors in, tensors out: no autograd, no dispatch, no GPU query at import time. Import the
submodules only after deciding on TRITON_INTERPRET (the functional layer imports them lazily).
"""
