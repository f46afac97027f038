"""A training step replayed from a CUDA graph: forward, the regularizer's double backward, the
backward and the optimizer step, with no Python or launch overhead per kernel.

``torch.compile`` cannot take an exact-FGR or IGR step (aot_autograd has no double backward), so a
CUDA graph is the way to run such a step without the host in the loop. :class:`StaticStep` owns
static input buffers; each call copies the batch into them and runs one training step:

* the first ``warmup`` calls run eagerly on a side stream (real training steps on real batches:
  they build the optimizer state, compile the Triton kernels, and let the regularizers' first-call
  range check read the host once);
* the next call captures the step in a ``torch.cuda.CUDAGraph`` and replays it; later calls
  replay. A change of learning rate (the scheduler's milestones) captures again, since the
  optimizer's scalars are baked into the graph;
* a batch of another shape or dtype (the last partial batch) is refused by :meth:`accepts`; the
  trainer runs that one eagerly.

What a call returns (the loss and the scalar parts) are clones of the static outputs, so the
trainer can keep them across steps without a host sync. CUDA generators that a regularizer holds
(``seed=`` / ``generator=``) are registered with the graph, so each replay draws fresh numbers.

``capture=False`` runs the same static-buffer plumbing eagerly: that is how the CPU tests check
that a static-buffer step equals the eager one (a CPU cannot capture).
"""

from __future__ import annotations

import contextlib

import torch

#: methods whose step can be captured (the adversarial ones run FlowPGD's host-side early exit)
CAPTURABLE_METHODS = ("standard", "igr", "fgr", "fgr-fd")


def check_capturable(method: str, device: torch.device, world_size: int) -> None:
    """ValueError naming ``cuda_graph`` when a run with these settings cannot be captured."""
    if device.type != "cuda":
        raise ValueError(f"cuda_graph (--cuda-graph) needs a CUDA device, got {device}: drop it on a CPU")
    if world_size > 1:
        raise ValueError("cuda_graph (--cuda-graph) runs one process: DistributedDataParallel's gradient "
                         "all-reduce is not captured; drop --cuda-graph under torchrun")
    if method not in CAPTURABLE_METHODS:
        raise ValueError(f"cuda_graph (--cuda-graph) supports methods {CAPTURABLE_METHODS}, got {method!r} "
                         "(adversarial training's attack loop stops early on the host)")


def _cuda_generators(obj, depth: int = 4) -> list:
    """CUDA ``torch.Generator`` objects held by ``obj`` or its attributes (``depth`` levels)."""
    found = []
    if isinstance(obj, torch.Generator):
        return [obj] if obj.device.type == "cuda" else []
    if depth == 0:
        return found
    values = vars(obj).values() if hasattr(obj, "__dict__") else ()
    if isinstance(obj, dict):
        values = obj.values()
    for value in values:
        if isinstance(value, (torch.Tensor, torch.nn.Module)):
            continue
        found += _cuda_generators(value, depth - 1)
    return found


class StaticStep:
    """``step(images, labels) -> (loss, parts)``: one training step through static buffers,
    captured in a CUDA graph after ``warmup`` eager steps (see the module docstring).

    ``objective(model, images, labels) -> (loss, parts)``; ``model`` is what the optimizer trains;
    ``autocast``: a zero-argument callable returning the autocast context of the step (its weight
    cache must be off under capture: ``torch.autocast(..., cache_enabled=False)``).
    """

    def __init__(self, model, objective, optimizer, capture: bool = True, warmup: int = 3, autocast=None):
        if capture and not torch.cuda.is_available():
            raise ValueError("capture=True needs CUDA")
        self.model, self.objective, self.optimizer = model, objective, optimizer
        self.capture, self.warmup = capture, warmup
        self.autocast = autocast or contextlib.nullcontext
        self.calls = 0
        self.graph = None
        self._lrs = None
        self.static_images = self.static_labels = None
        self.static_loss = self.static_parts = None

    # -- the step ---------------------------------------------------------------------------
    def _step(self):
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss, parts = self.objective(self.model, self.static_images, self.static_labels)
        loss.backward()
        self.optimizer.step()
        return loss, parts

    def accepts(self, images: torch.Tensor, labels: torch.Tensor) -> bool:
        """True when the batch fits the static buffers (always before the first call)."""
        if self.static_images is None:
            return True
        return (images.shape == self.static_images.shape and images.dtype == self.static_images.dtype
                and images.device == self.static_images.device and labels.shape == self.static_labels.shape
                and labels.dtype == self.static_labels.dtype)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor):
        if not self.accepts(images, labels):
            raise ValueError(f"StaticStep holds batches of {tuple(self.static_images.shape)}, got "
                             f"{tuple(images.shape)}: run that step eagerly")
        if self.static_images is None:
            self.static_images, self.static_labels = images.clone(), labels.clone()
        else:
            self.static_images.copy_(images)
            self.static_labels.copy_(labels)
        self.calls += 1
        if not self.capture:
            loss, parts = self._step()
        elif self.calls <= self.warmup:
            loss, parts = self._side_stream_step()
        else:
            lrs = tuple(float(group["lr"]) for group in self.optimizer.param_groups)
            if self.graph is None or lrs != self._lrs:
                self._capture()
                self._lrs = lrs
            self.graph.replay()
            loss, parts = self.static_loss, self.static_parts
        return _detached_copy(loss), {k: _detached_copy(v) for k, v in parts.items()}

    def _side_stream_step(self):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            loss, parts = self._step()
        torch.cuda.current_stream().wait_stream(side)
        return loss, parts

    def _capture(self) -> None:
        self.graph = None  # frees the previous graph's pool before a new capture
        graph = torch.cuda.CUDAGraph()
        for generator in _cuda_generators(self.objective):
            if hasattr(graph, "register_generator_state"):
                graph.register_generator_state(generator)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            self.static_loss, self.static_parts = self._step()
        self.graph = graph


def _detached_copy(value):
    return value.detach().clone() if torch.is_tensor(value) else value
