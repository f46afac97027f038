"""Robust accuracy of a classifier under flow attacks, as a table."""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .._io import save_atomic
from .._progress import progress_bar
from ..ops.validation import check_unit_range
from .base import FlowAttack, check_grad_mode, check_images, check_int, check_label_range, check_number, eval_mode


@dataclass
class EvaluationRow:
    """One line of the table of :func:`evaluate` (:attr:`EvaluationResult.rows`).

    Args:
        attack: the attack's name ('clean' for the clean row).
        budget: the attack's budget (a ``budget_kind`` norm in its ``budget_units``: FlowPGD's eps,
            a minimum-norm attack's T-norm in pixels), None when the attack ran at its own settings.
        units: the budget's unit ('normalized', 'pixels' or None).
        accuracy: fraction of examples classified correctly (under the attack).
        examples: count.

    Example:
        >>> from flowtriton.attacks import EvaluationRow
        >>> row = EvaluationRow("FlowPGD", 0.01, "normalized", 0.75, 4)
        >>> row.attack, row.budget, row.units, row.accuracy, row.examples
        ('FlowPGD', 0.01, 'normalized', 0.75, 4)
    """

    attack: str
    budget: float | None
    units: str | None
    accuracy: float
    examples: int


@dataclass
class EvaluationResult:
    """What :func:`evaluate` returns: the table of clean and robust accuracies, per-example masks
    and what ran.

    The masks give the worst case over ANY choice of attacks and budgets (:meth:`worst_case`) and
    let evaluations run one attack at a time be joined (:meth:`merge`). ``accuracy(attack,
    budget)`` reads one row, ``clean_accuracy`` the first; ``to_markdown()``, ``to_json()`` /
    ``from_json()`` and ``to_dict()`` / ``from_dict()`` write and read it.

    Args:
        rows: the :class:`EvaluationRow` list: clean first; 'union' rows last (the worst case per
            example over the attacks, see :func:`evaluate`).
        median_tnorm: per minimum-norm attack the median T-norm (pixels) of the successful
            deformations of correctly classified examples (NaN when there is none).
        masks: per row except the union rows, a bool (N,) CPU tensor, True where that example is
            classified correctly and survives the attack, keyed by :func:`row_key` ('clean',
            'flowpgd@0.02', 'adef@1', 'rt').
        masking: the gradient-masking check, one dict per L-inf budget of a gradient attack (see
            :func:`masking_check`); None when the result does not say (e.g. read from an old file).
        protocol: what ran: preset name and version, every attack's settings and budgets, library
            commit.
        norms: per run (keyed like ``masks``; a minimum-norm attack once, under its name) a (N, 3)
            CPU tensor: T-norm, largest |x| and |y| component (pixels) of the flow where the run
            fooled a correctly classified example, inf elsewhere.
        run_info: what each run was (attack class, gradient attack or not, units, norm, budget).
        image_size: (height, width) of the images, for converting normalized budgets to pixels.
        seconds: wall time of each attack (seconds, all its budgets and batches), as measured when
            it ran.

    Example:
        >>> from flowtriton.attacks import EvaluationResult, RandomFlow, evaluate
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> images = torch.rand(4, 1, 8, 8)
        >>> labels = model(images).argmax(dim=1)  # every example correct clean
        >>> result = evaluate(model, (images, labels), RandomFlow(model, samples=4, seed=0),
        ...                   budgets={"RandomFlow": [0.01, 0.05]})
        >>> [(row.attack, row.budget) for row in result.rows]
        [('clean', None), ('RandomFlow', 0.01), ('RandomFlow', 0.05)]
        >>> result.clean_accuracy, sorted(result.masks), result.masks["clean"].shape
        (1.0, ['RandomFlow@0.01', 'RandomFlow@0.05', 'clean'], torch.Size([4]))
        >>> result.worst_case({"RandomFlow": [0.01, 0.05]}) == result.accuracy("RandomFlow", 0.05)
        True
        >>> EvaluationResult.from_json(result.to_json(masks=True)).rows == result.rows
        True
    """

    rows: list[EvaluationRow]
    median_tnorm: dict[str, float] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)
    #: the gradient-masking check, one dict per L-inf budget of a gradient attack (see
    #: :func:`masking_check`); None when the result does not say (e.g. read from an old file).
    masking: list | None = None
    #: what ran: preset name and version, every attack's settings and budgets, library commit.
    protocol: dict | None = None
    #: per run (keyed like ``masks``; a minimum-norm attack once, under its name) a (N, 3) CPU
    #: tensor: T-norm, largest |x| and |y| component (pixels) of the flow where the run fooled a
    #: correctly classified example, inf elsewhere; and what each run was (``run_info``).
    norms: dict[str, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)
    run_info: dict[str, dict] = field(default_factory=dict, compare=False, repr=False)
    #: (height, width) of the images, for converting normalized budgets to pixels.
    image_size: tuple | None = field(default=None, compare=False, repr=False)
    #: wall time of each attack (seconds, all its budgets and batches), as measured when it ran.
    seconds: dict[str, float] = field(default_factory=dict, compare=False, repr=False)

    @property
    def clean_accuracy(self) -> float:
        return self.rows[0].accuracy

    @property
    def masking_flagged(self) -> bool:
        """True when the gradient-masking check fired at any budget (see :func:`masking_check`)."""
        return any(entry["flagged"] for entry in (self.masking or []))

    def accuracy(self, attack: str, budget: float | None = None) -> float:
        """The accuracy of one row."""
        for row in self.rows:
            if row.attack == attack and row.budget == budget:
                return row.accuracy
        raise KeyError(f"no row for attack {attack!r} at budget {budget!r}")

    def worst_case(self, selection: dict) -> float:
        """Accuracy against the worst case per example over ``selection`` = {attack: budget or
        None (its budget-less row), or a list of budgets}: an example counts when it is correct
        clean and survives every selected row. KeyError names a row without a mask."""
        if not isinstance(selection, dict) or not selection:
            raise ValueError("selection must be a non-empty {attack: budget(s)} dict")
        survived = self._mask("clean").clone()
        for name, budgets in selection.items():
            for budget in (budgets if isinstance(budgets, (list, tuple)) else [budgets]):
                survived &= self._mask(row_key(name, budget))
        return float(survived.float().mean())

    def _mask(self, key: str) -> torch.Tensor:
        if key not in self.masks:
            raise KeyError(f"no per-example mask for row {key!r}; rows with masks: {sorted(self.masks)}")
        return self.masks[key]

    @classmethod
    def merge(cls, results: list) -> "EvaluationResult":
        """One result from evaluations of the SAME examples by different attacks (say, one attack
        per call, so a long evaluation resumes attack by attack): the clean row once, every
        attack's rows in order, and the budget-less union row over all of them (the per-T-norm
        union rows of :func:`evaluate` are not rebuilt: use :meth:`worst_case`). ValueError when
        the clean masks differ (other examples, or another model) or a row (attack, budget)
        appears twice. Clean predictions must agree bit for bit, so merge results from the same
        device and model."""
        if not results:
            raise ValueError("merge needs at least one EvaluationResult")
        clean = results[0]._mask("clean")
        rows, masks, medians = [results[0].rows[0]], {"clean": clean}, {}
        for result in results:
            if result._mask("clean").shape != clean.shape or not torch.equal(result._mask("clean"), clean):
                raise ValueError("merge: the results were computed on different examples or models (clean rows differ)")
            for row in result.rows[1:]:
                if row.attack == UNION:
                    continue
                key = row_key(row.attack, row.budget)
                if key in masks:
                    raise ValueError(f"merge: row {key!r} appears in more than one result")
                rows.append(row)
                masks[key] = result._mask(key)
            medians.update(result.median_tnorm)
        norms, run_info, protocols = {}, {}, []
        for result in results:
            norms.update(result.norms)
            run_info.update(result.run_info)
            if result.protocol:
                protocols.append(result.protocol)
        size = next((r.image_size for r in results if r.image_size is not None), None)
        protocol = None
        if protocols:
            protocol = {**protocols[0], "attacks": {k: v for p in protocols for k, v in p["attacks"].items()}}
            if len({(p["preset"], p["version"]) for p in protocols}) > 1:
                protocol["preset"] = [p["preset"] for p in protocols]
                protocol["version"] = [p["version"] for p in protocols]
        masking = None
        if all(result.masking is not None for result in results) and run_info:
            masking = masking_check(clean, masks, norms, run_info, size)
        seconds = {k: v for result in results for k, v in result.seconds.items()}
        merged = cls(rows=rows, median_tnorm=medians, masks=masks, masking=masking, protocol=protocol, norms=norms,
                     run_info=run_info, image_size=size, seconds=seconds)
        names = list(dict.fromkeys(row.attack for row in rows[1:]))
        if len(names) >= 2:
            everything = clean.clone()
            for key, mask in masks.items():
                everything &= mask
            merged.rows.append(EvaluationRow(UNION, None, None, float(everything.float().mean()), int(clean.numel())))
        return merged

    def to_dict(self, masks: bool = False, norms: bool = False) -> dict:
        """JSON-ready dict: rows, medians, the masking check ('masking_check') and the protocol;
        ``masks=True`` adds the per-example masks as strings of '0'/'1'; ``norms=True`` the
        per-example flow norms of every run (``[tnorm, |x|, |y|]`` in pixels, None where the run
        did not fool the example), the runs' descriptions and the image size, so that
        :meth:`merge` can redo the masking check after a JSON round trip."""
        out = {"rows": [asdict(row) for row in self.rows],
               "median_tnorm": {k: (None if math.isnan(v) else v) for k, v in self.median_tnorm.items()}}
        if self.masking is not None:
            out["masking_check"] = self.masking
        if self.protocol is not None:
            out["protocol"] = self.protocol
        if self.seconds:
            out["seconds"] = dict(self.seconds)
        if masks:
            out["masks"] = {k: "".join("1" if v else "0" for v in m.tolist()) for k, m in self.masks.items()}
        if norms:
            out["flow_norms"] = {k: [None if math.isinf(row[0]) else [round(v, 6) for v in row] for row in t.tolist()]
                                 for k, t in self.norms.items()}
            out["runs"] = self.run_info
            out["image_size"] = list(self.image_size) if self.image_size is not None else None
        return out

    def to_json(self, masks: bool = False, norms: bool = False, **kwargs) -> str:
        """``json.dumps`` of :meth:`to_dict` (``masks``, ``norms`` as there; other arguments go to json)."""
        return json.dumps(self.to_dict(masks=masks, norms=norms), **kwargs)

    @classmethod
    def from_dict(cls, data: dict) -> "EvaluationResult":
        rows = [EvaluationRow(**row) for row in data["rows"]]
        medians = {k: (math.nan if v is None else float(v)) for k, v in data.get("median_tnorm", {}).items()}
        masks = {k: torch.tensor([c == "1" for c in v], dtype=torch.bool) for k, v in data.get("masks", {}).items()}
        norms = {k: torch.tensor([[math.inf] * 3 if r is None else r for r in v], dtype=torch.float64).view(-1, 3)
                 for k, v in data.get("flow_norms", {}).items()}
        if rows:
            total = rows[0].examples
            wrong = sorted(k for k, m in {**masks, **norms}.items() if m.shape[0] != total)
            if wrong:
                raise ValueError(f"masks {wrong} do not hold one flag per example ({total})")
        size = data.get("image_size")
        return cls(rows=rows, median_tnorm=medians, masks=masks, masking=data.get("masking_check"),
                   protocol=data.get("protocol"), norms=norms, run_info=dict(data.get("runs", {})),
                   image_size=tuple(size) if size else None, seconds=dict(data.get("seconds", {})))

    @classmethod
    def from_json(cls, text: str) -> "EvaluationResult":
        return cls.from_dict(json.loads(text))

    def to_markdown(self) -> str:
        lines = ["| attack | budget | units | accuracy | examples |", "|---|---|---|---|---|"]
        for row in self.rows:
            budget = "-" if row.budget is None else f"{row.budget:g}"
            lines.append(f"| {row.attack} | {budget} | {row.units or '-'} | {row.accuracy:.4f} | {row.examples} |")
        if self.median_tnorm:
            lines += ["", "| attack | median successful T-norm (px) |", "|---|---|"]
            lines += [f"| {name} | {value:.4f} |" for name, value in self.median_tnorm.items()]
        if self.masking is not None:
            lines += ["", masking_text(self.masking)]
        if self.protocol:
            p = self.protocol
            library = p.get("library", {})
            named = f"preset {p['preset']!r} version {p['version']}" if p.get("preset") else "no preset"
            lines += ["", f"Protocol: {named}; flowtriton {library.get('flowtriton')} at commit "
                          f"{library.get('commit')}" + (" (with uncommitted changes)"
                                                        if library.get("uncommitted_changes") is True else "")
                      + "; every attack's settings are in results.json ('protocol')."]
        return "\n".join(lines) + "\n"


def row_key(attack: str, budget: float | None) -> str:
    """The key of a row's mask: ``'<attack>'`` without a budget, else ``'<attack>@<budget:g>'``."""
    return attack if budget is None else f"{attack}@{budget:g}"


def _batches(data, batch_size: int):
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        images, labels = data
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"data: {images.shape[0]} images but {labels.shape[0]} labels")
        for start in range(0, images.shape[0], batch_size):
            yield images[start:start + batch_size], labels[start:start + batch_size]
        return
    try:
        iterator = iter(data)
    except TypeError:
        raise TypeError("data must be a DataLoader (or iterable) of (images, labels) batches or an "
                        f"(images, labels) tuple of tensors, got {type(data).__name__}") from None
    for batch in iterator:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError("each batch of data must be an (images, labels) pair")
        yield batch[0], batch[1]


def _check_batch(images, labels) -> None:
    """The images and labels of one batch of ``data`` (their values are checked by the clean pass)."""
    check_images(images)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels in data must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels in data must be integer class indices, got {labels.dtype} (float labels are not "
                        "truncated: convert them with labels.long() if that is meant)")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels in data must have shape ({images.shape[0]},) to match images "
                         f"{tuple(images.shape)}, got {tuple(labels.shape)}")


def _unwrapped(model):
    """The module under torch.compile / DataParallel / DistributedDataParallel wrappers."""
    while True:
        if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def _name_attacks(attacks) -> dict:
    """{name: attack}: a dict as given (names must be strings); a sequence named by class, with
    ``-1``, ``-2``, ... appended to every class that appears more than once."""
    if isinstance(attacks, FlowAttack):
        attacks = [attacks]
    if isinstance(attacks, Mapping):
        for name in attacks:
            if not isinstance(name, str):
                raise TypeError(f"attacks must be keyed by name (str), got key {name!r}")
        return dict(attacks)
    if isinstance(attacks, (str, bytes)):
        raise TypeError("attacks must be a {name: attack} dict or a sequence of attacks, got a string")
    try:
        attacks = list(attacks)
    except TypeError:
        raise TypeError(f"attacks must be a {{name: attack}} dict or a sequence of attacks, got "
                        f"{type(attacks).__name__}") from None
    classes = [type(a).__name__ for a in attacks]
    named, seen = {}, {}
    for cls, attack in zip(classes, attacks):
        if classes.count(cls) > 1:
            seen[cls] = seen.get(cls, 0) + 1
            cls = f"{cls}-{seen[cls]}"
        named[cls] = attack
    return named


def _budget_list(name: str, value) -> list:
    """The budgets of one attack: a number (one budget) or a sequence of numbers."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return [value]
    if isinstance(value, (str, bytes, Mapping)):
        raise TypeError(f"budgets[{name!r}] must be a number or a list of numbers, got {type(value).__name__}")
    try:
        return list(value)
    except TypeError:
        raise TypeError(f"budgets[{name!r}] must be a number or a list of numbers, got "
                        f"{type(value).__name__}") from None


def _model_device(model) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


UNION = "union"
WORST_LINF = "worst-case-linf"
WORST_TNORM = "worst-case-tnorm"
RESERVED = ("clean", UNION, WORST_LINF, WORST_TNORM)
#: The masking check flags a budget when weaker attacks beat the gradient attack on more than
#: this share of the examples.
MASKING_THRESHOLD = 0.005
#: Relative slack when testing whether a flow lies within a budget (float32 rounding of flows
#: projected onto the budget exactly).
BUDGET_SLACK = 1e-5
MASKING_ADVICE = ("the signature of gradient masking (or of a gradient attack too weak for this model): do not quote "
                  "FlowPGD's accuracy alone. Quote the worst case over every attack (the preset's worst-case rows, "
                  "or EvaluationResult.worst_case); strengthen the gradient attack (more restarts and steps: "
                  "FlowPGD's defaults, preset 'standard'); and look for non-differentiable, randomized or saturating "
                  "parts of the model (quantization, JPEG, thresholds, stochastic layers: attack them with BPDA or "
                  "EOT).")


def _plan(attacks, budgets, model) -> dict:
    """{name: sorted budgets} after checking every attack and budget."""
    if budgets is None:
        budgets = {}
    if not isinstance(budgets, Mapping):
        raise TypeError(f"budgets must be a {{attack name: budget or [budgets]}} dict, got {type(budgets).__name__} "
                        f"(attack names: {list(attacks)})")
    budgets = {name: _budget_list(name, value) for name, value in budgets.items()}
    for name in budgets:
        if name not in attacks:
            raise ValueError(f"budgets names an unknown attack {name!r}; attacks: {list(attacks)}")
    plans = {}
    for name, attack in attacks.items():
        if name in RESERVED:
            raise ValueError(f"attack name {name!r} is reserved for the table's own rows; rename it")
        if not isinstance(attack, FlowAttack):
            raise TypeError(f"attacks[{name!r}] must be a FlowAttack, got {type(attack).__name__}")
        if attack.targeted:
            raise ValueError(f"attacks[{name!r}] is targeted; evaluate measures untargeted robustness")
        if _unwrapped(attack.model) is not _unwrapped(model):
            raise ValueError(f"attacks[{name!r}] was built on another model than the one given to evaluate: "
                             "its rows would attack one model and score another's clean accuracy; build every "
                             "attack on this model")
        values = sorted(check_number(b, f"budgets[{name!r}]") for b in budgets.get(name, []))
        if values and attack.budget_kind is None:
            raise ValueError(f"budgets[{name!r}]: {type(attack).__name__} has no budget to set (budget_kind is None): "
                             "it runs once at its own settings; give it no budgets")
        if values and not attack.minimum_norm:
            attack.with_budget(values[0])  # the attack's own check of a budget
        plans[name] = values
    return plans


def runs_per_batch(attack, budgets) -> int:
    """How many times :func:`evaluate` runs ``attack`` on each batch: once for a minimum-norm
    attack or one without budgets, else once per budget."""
    return 1 if attack.minimum_norm or not budgets else len(budgets)


def _tnorm_pixels(attack) -> bool:
    """True when the attack's budget is a T-norm in pixels (comparable across attacks)."""
    return attack.budget_kind == "tnorm" and attack.budget_units == "pixels"


def _pixels_per_unit(units, image_size):
    """(sx, sy): pixels per budget unit along x and y (None when normalized units lack a size)."""
    if units == "pixels":
        return 1.0, 1.0
    if image_size is None:
        return None
    height, width = image_size
    return (width - 1) / 2.0, (height - 1) / 2.0


def _inside_linf(norms: torch.Tensor, budget: float, scale) -> torch.Tensor:
    """(N,) bool: the run fooled the example with a flow inside the L-inf box ``budget``."""
    sx, sy = scale
    slack = 1.0 + BUDGET_SLACK
    return (torch.isfinite(norms[:, 0]) & (norms[:, 1] <= budget * sx * slack + 1e-12)
            & (norms[:, 2] <= budget * sy * slack + 1e-12))


def masking_check(correct: torch.Tensor, masks: dict, norms: dict, run_info: dict, image_size,
                  threshold: float = MASKING_THRESHOLD) -> list:
    """The gradient-masking self-check of :func:`evaluate` (its ``result.masking``).

    For every L-inf budget a gradient attack (FlowPGD with ``norm='linf'``) ran at, the examples
    that it did NOT fool but that a weaker-by-design attack (every other run: ADef, StAdv,
    RandomFlow, rotation + translation, ...) fooled with a flow inside the same L-inf box (largest
    |x| and |y| flow component within the budget, converted to pixels per axis). A gradient attack
    at full strength finds (nearly) everything a weaker one finds; when it misses more than
    ``threshold`` (0.5 %) of the examples, the entry is flagged.

    Args:
        correct: (N,) bool, the examples classified correctly clean (``result.masks['clean']``).
        masks: {run key: (N,) bool survived} as :attr:`EvaluationResult.masks`.
        norms: {run key: (N, 3) T-norm, largest |x|, |y| in pixels, inf where not fooled} as
            :attr:`EvaluationResult.norms`.
        run_info: {run key: description} as :attr:`EvaluationResult.run_info`.
        image_size: (height, width) of the images (None: normalized budgets cannot be checked).
        threshold: share of the examples above which an entry is flagged (default 0.005).

    Returns:
        One dict per (units, budget): 'budget', 'units', 'gradient_attacks' (run keys),
        'examples', 'missed' (count; None when no weaker attack ran), 'fraction', 'by' ({run key:
        count} for each weaker run), 'flagged', 'threshold', 'advice' (what to do, when flagged).

    Example:
        >>> from flowtriton.attacks import FlowPGD, RandomFlow, evaluate, masking_check
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> images = torch.rand(4, 1, 8, 8)
        >>> attacks = [FlowPGD(model, steps=3, restarts=1, seed=0), RandomFlow(model, samples=4, seed=0)]
        >>> result = evaluate(model, (images, model(images).argmax(dim=1)), attacks,
        ...                   budgets={"FlowPGD": 0.05, "RandomFlow": 0.05})
        >>> entries = masking_check(result.masks["clean"], result.masks, result.norms, result.run_info,
        ...                         result.image_size)
        >>> [(e["budget"], e["units"], e["gradient_attacks"]) for e in entries]
        [(0.05, 'normalized', ['FlowPGD@0.05'])]
        >>> isinstance(entries[0]["flagged"], bool), entries == result.masking
        (True, True)
    """
    total = int(correct.numel())
    levels = {}
    for key, info in run_info.items():
        if info.get("gradient") and info.get("norm") == "linf" and info.get("budget") is not None and key in masks:
            levels.setdefault((info["units"], float(info["budget"])), []).append(key)
    weaker = [key for key, info in run_info.items() if not info.get("gradient") and key in norms]
    out = []
    for (units, budget), keys in sorted(levels.items(), key=lambda item: (str(item[0][0]), item[0][1])):
        entry = {"budget": budget, "units": units, "gradient_attacks": keys, "examples": total, "missed": None,
                 "fraction": None, "by": {}, "flagged": False, "threshold": threshold, "advice": None}
        scale = _pixels_per_unit(units, image_size)
        if not weaker or scale is None or total == 0:
            entry["advice"] = "not checked: no weaker attack ran" if not weaker else "not checked: image size unknown"
            out.append(entry)
            continue
        fooled = torch.zeros_like(correct)
        for key in keys:
            fooled |= correct & ~masks[key]
        missed = torch.zeros_like(correct)
        for key in weaker:
            hit = correct & ~fooled & _inside_linf(norms[key], budget, scale)
            entry["by"][key] = int(hit.sum())
            missed |= hit
        entry["missed"] = int(missed.sum())
        entry["fraction"] = entry["missed"] / total
        entry["flagged"] = entry["fraction"] > threshold
        if entry["flagged"]:
            entry["advice"] = (f"{', '.join(keys)} missed {entry['missed']} of {total} examples "
                               f"({100 * entry['fraction']:.1f} % > {100 * threshold:g} %) that weaker attacks fooled "
                               f"inside the same L-inf budget ({budget:g} {units}): " + MASKING_ADVICE)
        out.append(entry)
    return out


def masking_text(entries: list) -> str:
    """The masking check as a markdown paragraph and table."""
    if not entries:
        return ("Gradient-masking check: not run (no FlowPGD L-inf budget, or no other attack, in this "
                "evaluation).")
    lines = [f"Gradient-masking check: examples fooled inside FlowPGD's own L-inf budget by a weaker attack but not "
             f"by FlowPGD (flagged above {100 * entries[0]['threshold']:g} % of the examples).", "",
             "| budget | units | missed | share | by | verdict |", "|---|---|---|---|---|---|"]
    for e in entries:
        if e["missed"] is None:
            lines.append(f"| {e['budget']:g} | {e['units']} | - | - | - | {e['advice']} |")
            continue
        by = ", ".join(f"{k} {v}" for k, v in e["by"].items() if v) or "-"
        verdict = "**FLAGGED**" if e["flagged"] else "ok"
        lines.append(f"| {e['budget']:g} | {e['units']} | {e['missed']} | {100 * e['fraction']:.2f} % | {by} "
                     f"| {verdict} |")
    flagged = [e for e in entries if e["flagged"]]
    if flagged:
        lines += ["", "**Warning**: " + flagged[0]["advice"]]
    return "\n".join(lines)


def _worst_case_rows(correct, norms, linf_levels, tnorm_levels, image_size):
    """(rows, masks): per L-inf budget (units, b) and per T-norm budget b (pixels), the examples
    correct and fooled by no run with a flow within that budget (any attack, any budget)."""
    total = int(correct.numel())
    rows, masks = [], {}
    for units, budget in linf_levels:
        scale = _pixels_per_unit(units, image_size)
        if scale is None:
            continue
        survived = correct.clone()
        for values in norms.values():
            survived &= ~_inside_linf(values, budget, scale)
        rows.append(EvaluationRow(WORST_LINF, budget, units, float(survived.float().mean()), total))
        masks[row_key(WORST_LINF, budget)] = survived
    for budget in tnorm_levels:
        survived = correct.clone()
        for values in norms.values():
            survived &= ~(values[:, 0] <= budget * (1 + BUDGET_SLACK))
        rows.append(EvaluationRow(WORST_TNORM, budget, "pixels", float(survived.float().mean()), total))
        masks[row_key(WORST_TNORM, budget)] = survived
    return rows, masks


def _table(correct, attacks, robust, needed, tnorms, norms=None, run_info=None, image_size=None,
           worst=None, protocol=None, seconds=None) -> EvaluationResult:
    """The result for the attacks finished so far (``robust`` holds only those). ``worst``:
    (L-inf levels [(units, budget)], T-norm levels [pixels]) for the worst-case rows of a preset."""
    norms, run_info = norms or {}, run_info or {}
    total = int(correct.numel())
    rows = [EvaluationRow("clean", None, None, float(correct.float().mean()), total)]
    row_masks = {"clean": correct}
    for name, masks in robust.items():
        attack = attacks[name]
        units = attack.budget_units
        for b, mask in masks.items():
            rows.append(EvaluationRow(name, b, units if b is not None else None, float(mask.float().mean()), total))
            row_masks[row_key(name, b)] = mask
    if len(robust) >= 2:
        everything = correct.clone()
        for masks in robust.values():
            for mask in masks.values():
                everything &= mask
        rows.append(EvaluationRow(UNION, None, None, float(everything.float().mean()), total))
        # Per T-norm budget (pixels): every minimum-norm attack judged at b, and every budgeted
        # attack measured in pixel T-norm that ran at exactly b.
        levels = sorted({b for name in robust if _tnorm_pixels(attacks[name]) for b in robust[name] if b is not None})
        for b in levels:
            survived, count = correct.clone(), 0
            for name in robust:
                if attacks[name].minimum_norm:
                    survived &= correct & ~(needed[name] <= b)
                    count += 1
                elif _tnorm_pixels(attacks[name]) and b in robust[name]:
                    survived &= robust[name][b]
                    count += 1
            if count >= 2:
                rows.append(EvaluationRow(UNION, b, "pixels", float(survived.float().mean()), total))
    if worst is not None:
        extra_rows, extra_masks = _worst_case_rows(correct, norms, worst[0], worst[1], image_size)
        rows += extra_rows
        row_masks.update(extra_masks)
    medians = {}
    for name, values in tnorms.items():
        values = values[~torch.isnan(values)]
        medians[name] = float(values.median()) if values.numel() else math.nan
    masking = masking_check(correct, row_masks, norms, run_info, image_size)
    return EvaluationResult(rows=rows, median_tnorm=medians, masks=row_masks, masking=masking, protocol=protocol,
                            norms=dict(norms), run_info=dict(run_info), image_size=image_size,
                            seconds=dict(seconds or {}))


def _run_info(attack, budget) -> dict:
    """What one run was, for the masking check: gradient L-inf attack or not, units, norm, budget."""
    return {"attack": type(attack).__name__, "gradient": bool(attack.gradient_budgeted),
            "units": attack.budget_units, "norm": attack.budget_kind,
            "budget": None if budget is None else float(budget)}


def _flow_norms(result, ok: torch.Tensor) -> torch.Tensor:
    """(N, 3) CPU float64: [T-norm, largest |x|, largest |y|] (pixels) where ``result`` fooled a
    correctly classified example, inf elsewhere."""
    flow = result.flow.detach()
    values = torch.stack((result.tnorm, flow[:, 0].abs().flatten(1).amax(dim=1) if flow.numel() else result.tnorm,
                          flow[:, 1].abs().flatten(1).amax(dim=1) if flow.numel() else result.tnorm), dim=1)
    values = values.to(device="cpu", dtype=torch.float64)
    fooled = (ok & result.success.cpu())[:, None]
    return torch.where(fooled, values, torch.full_like(values, math.inf))


def _preset_plan(preset, attacks, budgets):
    """Check the preset arguments before any work: -> (names or None, linf budgets, tnorm budgets)."""
    from .presets import check_preset

    check_preset(preset)
    names = None
    if attacks is not None:
        names = [attacks] if isinstance(attacks, str) else attacks
        if isinstance(names, Mapping) or not all(isinstance(n, str) for n in names):
            raise TypeError("with a preset, attacks must be None (all of the preset's attacks) or a list of its "
                            "attack names")
        names = list(names)
    linf = tnorm = None
    if budgets is not None:
        if not isinstance(budgets, Mapping) or set(budgets) - {"linf", "tnorm"}:
            raise TypeError("with a preset, budgets must be a {'linf': [...], 'tnorm': [...]} dict (L-inf budgets "
                            f"in normalized units, T-norm budgets in pixels), got {budgets!r}")
        if "linf" in budgets:
            linf = sorted(check_number(b, "budgets['linf']") for b in _budget_list("linf", budgets["linf"]))
        if "tnorm" in budgets:
            tnorm = sorted(check_number(b, "budgets['tnorm']") for b in _budget_list("tnorm", budgets["tnorm"]))
    return names, linf, tnorm


def evaluate(model, data, attacks=None, budgets=None, batch_size: int = 256, device=None,
             max_batches: int | None = None, progress: bool = False, on_attack_done=None,
             preset: str | None = None, cache_dir=None) -> EvaluationResult:
    """Clean and robust accuracy of ``model`` on ``data`` under each attack at each budget, and
    against the union of the attacks (the worst case per example).

    Labels: (N,) integer class indices within the model's classes (float labels are a TypeError,
    not truncated). Works inside ``torch.no_grad()``; RuntimeError under ``torch.inference_mode()``.
    An example is robust only if it is classified correctly clean AND the attack did not succeed.

    Args:
        model: classifier; its mode is restored after each attack (attacks run it in eval mode).
        data: a DataLoader (any iterable of (images, labels) batches) or an (images, labels) tuple
            of tensors, cut into ``batch_size`` batches. Images (N, C, H, W) in [0, 1], integer
            labels. The batches are read once and kept (as given, usually on the CPU) for every
            attack.
        attacks: {name: attack}, or a sequence of attacks named by class ('FlowPGD'; a class given
            more than once is numbered: 'FlowPGD-1', 'FlowPGD-2', ... in order), or one attack.
            Untargeted attacks built on this ``model`` (the same module, or the module under a
            torch.compile / DataParallel / DistributedDataParallel wrapper; another model is a
            ValueError). 'clean', 'union', 'worst-case-linf' and 'worst-case-tnorm' are reserved
            names. With a ``preset``: None (every attack of the preset) or a list of the preset's
            attack names.
        budgets: {name: [budget, ...]} or {name: budget} (optional, per attack; a number is one
            budget). What a budget means is the attack's to say (the budget protocol of
            :class:`~flowtriton.attacks.FlowAttack`): a ``budget_kind`` norm ('linf' or 'tnorm')
            in its ``budget_units``.

            * FlowPGD, RandomFlow (not ``minimum_norm``): one run per budget
              (``attack.with_budget(b)``), eps in the attack's ``units``.
            * ADef, StAdv (``minimum_norm``, ``budget_kind`` 'tnorm' in pixels): ONE run; the
              accuracy at budget b counts an example as robust when it is correct and the attack
              either failed or needed a T-norm > b. Budget-less rows give the accuracy with no
              norm limit.
            * An attack without budgets runs once at its settings (row budget None); budgets for
              an attack whose ``budget_kind`` is None (RotationTranslation) are a ValueError.

            With a ``preset``: {'linf': [...], 'tnorm': [...]} (normalized L-inf budgets of FlowPGD
            and RandomFlow, pixel T-norm budgets of ADef and StAdv), each optional (default: the
            preset's).
        batch_size: examples per batch when ``data`` is an (images, labels) tuple.
        device: where to attack (default: the model's).
        max_batches: stop after that many batches.
        progress: show a progress bar (off by default; total = batches x attack runs, one tick per
            attack run on a batch; ``flowtriton evaluate`` turns it on).
        on_attack_done: ``callable(name, result)`` called after each attack with the
            :class:`EvaluationResult` of the attacks finished so far (write it to disk there, so
            that a failure late in a long run loses nothing).
        preset: 'standard', 'fast' or 'paper' (:mod:`flowtriton.attacks.presets`, docs/attacks.md):
            build the preset's attacks on ``model`` (ADef's labels from the model's class count)
            and add, after the union rows, one worst-case row per budget: 'worst-case-linf' at
            each L-inf budget (normalized) and 'worst-case-tnorm' at each T-norm budget (pixels),
            where an example counts as robust when it is correct and NO run of ANY attack fooled
            it with a flow within that budget (the L-inf box per flow component; the T-norm ball).
        cache_dir: a folder (created when missing) where each attack's per-example outcome is
            saved as it finishes (``<name>.pt``, written atomically); a later call with the same
            folder, the same model (class, structure, weights), images, labels, attack settings,
            budgets, preset, flowtriton version and commit, torch version and device reads it
            back instead of attacking again, so an interrupted evaluation resumes at the next
            attack. A saved outcome that differs in any of these is attacked again (and
            overwritten). The result equals an uninterrupted run's when every attack is seeded
            (``seed=``, as the presets' are): an unseeded attack draws from torch's global
            generator, which an attack read back does not advance. An attack given a
            ``generator`` is never cached (its state is not part of the key): it runs every time.
            ``result.seconds`` holds each attack's wall time, read back with the outcome.

    Returns:
        An :class:`EvaluationResult`: rows (clean first, then per attack in the given order,
        budgets ascending, then with two or more attacks the 'union' rows: budget None = robust
        against every attack run at every budget; budget b (pixels) = robust against every
        minimum-norm attack at T-norm b and every pixel-T-norm FlowPGD run at b, when at least two
        attacks share that budget; then a preset's worst-case rows) and the median successful
        T-norm of each minimum-norm attack; ``masking``: the gradient-masking check
        (:func:`masking_check`), also in the markdown and JSON; ``protocol``: the preset's name and
        version (None without one), every attack's settings and budgets, the library version and
        commit.

    Example:
        >>> from flowtriton.attacks import FlowPGD, RandomFlow, evaluate
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> images = torch.rand(4, 1, 8, 8)
        >>> labels = model(images).argmax(dim=1)  # every example correct clean
        >>> attacks = {"pgd": FlowPGD(model, steps=3, restarts=1, seed=0),
        ...            "random": RandomFlow(model, samples=4, seed=0)}
        >>> result = evaluate(model, (images, labels), attacks, budgets={"pgd": [0.01, 0.05], "random": 0.05})
        >>> [(row.attack, row.budget, row.units) for row in result.rows]  # doctest: +NORMALIZE_WHITESPACE
        [('clean', None, None), ('pgd', 0.01, 'normalized'), ('pgd', 0.05, 'normalized'),
         ('random', 0.05, 'normalized'), ('union', None, None)]
        >>> result.clean_accuracy, result.masking_flagged
        (1.0, False)
        >>> print(result.to_markdown())  # doctest: +ELLIPSIS
        | attack | budget | units | accuracy | examples |
        |---|---|---|---|---|
        | clean | - | - | 1.0000 | 4 |
        ...
    """
    check_grad_mode("evaluate")
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module), got {type(model).__name__}")
    if preset is not None:
        preset_names, linf_budgets, tnorm_budgets = _preset_plan(preset, attacks, budgets)
    else:
        if attacks is None:
            raise TypeError("evaluate needs attacks or a preset (preset='standard' for the standard ensemble)")
        attacks = _name_attacks(attacks)
        plans = _plan(attacks, budgets, model)
    batch_size = check_int(batch_size, "batch_size")
    if on_attack_done is not None and not callable(on_attack_done):
        raise TypeError(f"on_attack_done must be callable, got {type(on_attack_done).__name__}")
    device = torch.device(device) if device is not None else _model_device(model)
    if cache_dir is not None:
        from .._io import ensure_writable_dir

        cache_dir = ensure_writable_dir(cache_dir, "cache_dir")

    batches = []
    for number, batch in enumerate(_batches(data, batch_size)):
        if max_batches is not None and number >= max_batches:
            break
        batches.append(batch)
    if not batches or sum(int(labels.numel()) for _, labels in batches) == 0:
        raise ValueError("data holds no examples")
    clean = []
    classes = None
    for images, labels in batches:
        _check_batch(images, labels)
        check_unit_range(images, "images")
        with eval_mode(model), torch.no_grad():
            logits = model(images.to(device))
            check_label_range(labels, logits.shape[1])
            classes = int(logits.shape[1])
            clean.append((logits.argmax(dim=1) == labels.to(device)).cpu())
    correct = torch.cat(clean)
    image_size = tuple(int(v) for v in batches[0][0].shape[-2:])
    worst = None
    if preset is not None:
        from .presets import preset_suite

        attacks, plans = preset_suite(model, preset, classes, preset_names, linf_budgets, tnorm_budgets)
        plans = _plan(attacks, plans, model)
        linf_levels = sorted({(a.budget_units, b) for n, a in attacks.items()
                              if not a.minimum_norm and a.budget_kind == "linf" for b in plans[n]})
        tnorm_levels = sorted({b for n, a in attacks.items() if _tnorm_pixels(a) for b in plans[n]})
        worst = (linf_levels, tnorm_levels)
    from .presets import protocol as describe

    protocol = describe(attacks, plans, preset)

    runs = {name: runs_per_batch(attacks[name], plans[name]) for name in attacks}
    bar = progress_bar(progress, desc="evaluate", unit="run", total=len(batches) * sum(runs.values()),
                       dynamic_ncols=True)
    robust, needed, tnorms, norms, run_info, seconds = {}, {}, {}, {}, {}, {}
    fingerprint = _fingerprint(model, batches) if cache_dir is not None else None
    try:
        for name, attack in attacks.items():
            values = plans[name]
            cached = cache_dir is not None and getattr(attack, "generator", None) is None
            if cached:
                key = json.loads(json.dumps({  # plain JSON types: the file loads with weights_only
                    "fingerprint": fingerprint, "attack": protocol["attacks"][name],
                    "preset": [protocol["preset"], protocol["version"]], "library": protocol["library"],
                    "torch": str(protocol["torch"]), "device": str(device)}))
                saved = _read_cached(Path(cache_dir) / f"{name}.pt", key)
                if saved is not None:
                    for store, part in ((robust, "robust"), (needed, "needed"), (tnorms, "tnorms")):
                        if part in saved:
                            store[name] = saved[part]
                    norms.update(saved["norms"])
                    run_info.update(saved["run_info"])
                    seconds[name] = saved["seconds"]
                    bar.update(len(batches) * runs[name])
                    if on_attack_done is not None:
                        on_attack_done(name, _table(correct, attacks, robust, needed, tnorms, norms, run_info,
                                                    image_size, worst, protocol, seconds))
                    continue
            started = time.perf_counter()
            masks = {b: [] for b in (values or [None])}
            if attack.minimum_norm:
                norms_parts, medians = [], []
                flow_parts = []
            else:
                flow_parts = {b: [] for b in masks}
            for (images, labels), ok in zip(batches, clean):
                images, labels = images.to(device), labels.to(device).long()
                if attack.minimum_norm:
                    result = attack.run(images, labels)
                    norm = torch.where(result.success, result.tnorm, torch.full_like(result.tnorm, math.inf)).cpu()
                    for b in masks:
                        fooled = result.success.cpu() if b is None else norm <= b
                        masks[b].append(ok & ~fooled)
                    norms_parts.append(norm)
                    medians.append(torch.where(ok & result.success.cpu(), result.tnorm.cpu(),
                                               torch.full_like(norm, math.nan)))
                    flow_parts.append(_flow_norms(result, ok))
                    bar.set_postfix(attack=name)
                    bar.update(1)
                else:
                    for b in masks:
                        run = attack if b is None else attack.with_budget(b)
                        result = run.run(images, labels)
                        masks[b].append(ok & ~result.success.cpu())
                        flow_parts[b].append(_flow_norms(result, ok))
                        bar.set_postfix(attack=name, budget=b)
                        bar.update(1)
            robust[name] = {b: torch.cat(parts) for b, parts in masks.items()}
            if attack.minimum_norm:
                needed[name], tnorms[name] = torch.cat(norms_parts), torch.cat(medians)
                norms[name] = torch.cat(flow_parts)
                run_info[name] = _run_info(attack, None)
            else:
                for b, parts in flow_parts.items():
                    norms[row_key(name, b)] = torch.cat(parts)
                    run_info[row_key(name, b)] = _run_info(attack, b)
            seconds[name] = round(time.perf_counter() - started, 3)
            if cached:
                mine = [row_key(name, b) for b in flow_parts] if not attack.minimum_norm else [name]
                state = {"key": key, "robust": robust[name], "seconds": seconds[name],
                         "norms": {k: norms[k] for k in mine}, "run_info": {k: run_info[k] for k in mine}}
                if attack.minimum_norm:
                    state["needed"], state["tnorms"] = needed[name], tnorms[name]
                save_atomic(state, Path(cache_dir) / f"{name}.pt")
            if on_attack_done is not None:
                on_attack_done(name, _table(correct, attacks, robust, needed, tnorms, norms, run_info, image_size,
                                            worst, protocol, seconds))
    finally:
        bar.close()
    return _table(correct, attacks, robust, needed, tnorms, norms, run_info, image_size, worst, protocol, seconds)


def _fingerprint(model, batches) -> str:
    """SHA-256 of the model (its class, its printed structure, its weights and buffers) and of the
    examples: what a cached attack outcome was computed on."""
    digest = hashlib.sha256()
    module = _unwrapped(model)
    kind = type(module)
    digest.update(f"{kind.__module__}.{kind.__qualname__}\n{module!r}".encode())
    state = module.state_dict() if isinstance(module, torch.nn.Module) else {}
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for images, labels in batches:
        for tensor in (images, labels):
            t = tensor.detach().cpu().contiguous()
            digest.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
            digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _read_cached(path: Path, key: dict) -> dict | None:
    """The saved outcome at ``path`` when its key equals ``key`` (compared as JSON), else None
    (missing, unreadable or made for something else)."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file: attack again
        return None
    if not isinstance(saved, dict) or json.dumps(saved.get("key"), sort_keys=True) != json.dumps(key, sort_keys=True):
        return None
    return saved
