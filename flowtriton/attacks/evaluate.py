"""Robust accuracy of a classifier under flow attacks, as a table."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from ..ops.validation import check_unit_range
from .base import FlowAttack, check_grad_mode, check_images, check_int, check_label_range, check_number, eval_mode


@dataclass
class EvaluationRow:
    """One line of the table.

    attack: the attack's name ('clean' for the clean row). budget: the attack's budget (FlowPGD:
    eps in the attack's ``units``; minimum-norm attacks: a T-norm in pixels), None when the
    attack ran at its own settings. units: the budget's unit ('normalized', 'pixels' or None).
    accuracy: fraction of examples classified correctly (under the attack). examples: count.
    """

    attack: str
    budget: float | None
    units: str | None
    accuracy: float
    examples: int


@dataclass
class EvaluationResult:
    """``rows`` (clean first; 'union' rows last: the worst case per example over the attacks, see
    :func:`evaluate`), per minimum-norm attack the median T-norm (pixels) of the successful
    deformations of correctly classified examples (NaN when there is none), and ``masks``: per
    row except the union rows, a bool (N,) CPU tensor, True where that example is classified
    correctly and survives the attack, keyed by :func:`row_key` ('clean', 'flowpgd@0.02',
    'adef@1', 'rt'). The masks give the worst case over ANY choice of attacks and budgets
    (:meth:`worst_case`) and let evaluations run one attack at a time be joined (:meth:`merge`)."""

    rows: list[EvaluationRow]
    median_tnorm: dict[str, float] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)

    @property
    def clean_accuracy(self) -> float:
        return self.rows[0].accuracy

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
        merged = cls(rows=rows, median_tnorm=medians, masks=masks)
        names = list(dict.fromkeys(row.attack for row in rows[1:]))
        if len(names) >= 2:
            everything = clean.clone()
            for key, mask in masks.items():
                everything &= mask
            merged.rows.append(EvaluationRow(UNION, None, None, float(everything.float().mean()), int(clean.numel())))
        return merged

    def to_dict(self, masks: bool = False) -> dict:
        """JSON-ready dict; ``masks=True`` adds the per-example masks as strings of '0'/'1'."""
        out = {"rows": [asdict(row) for row in self.rows],
               "median_tnorm": {k: (None if math.isnan(v) else v) for k, v in self.median_tnorm.items()}}
        if masks:
            out["masks"] = {k: "".join("1" if v else "0" for v in m.tolist()) for k, m in self.masks.items()}
        return out

    def to_json(self, masks: bool = False, **kwargs) -> str:
        """``json.dumps`` of :meth:`to_dict` (``masks`` as there; other arguments go to json)."""
        return json.dumps(self.to_dict(masks=masks), **kwargs)

    @classmethod
    def from_dict(cls, data: dict) -> "EvaluationResult":
        rows = [EvaluationRow(**row) for row in data["rows"]]
        medians = {k: (math.nan if v is None else float(v)) for k, v in data.get("median_tnorm", {}).items()}
        masks = {k: torch.tensor([c == "1" for c in v], dtype=torch.bool) for k, v in data.get("masks", {}).items()}
        if masks and rows:
            total = rows[0].examples
            wrong = sorted(k for k, m in masks.items() if m.numel() != total)
            if wrong:
                raise ValueError(f"masks {wrong} do not hold one flag per example ({total})")
        return cls(rows=rows, median_tnorm=medians, masks=masks)

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
RESERVED = ("clean", UNION)


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
        if values and not attack.minimum_norm:
            attack.with_budget(values[0])  # raises for attacks without a budget
        plans[name] = values
    return plans


def _tnorm_pixels(attack) -> bool:
    """True when the attack's budget is a T-norm in pixels (comparable across attacks)."""
    return attack.minimum_norm or (getattr(attack, "units", None) == "pixels"
                                   and getattr(attack, "norm", None) == "tnorm")


def _table(correct, attacks, robust, needed, tnorms) -> EvaluationResult:
    """The result for the attacks finished so far (``robust`` holds only those)."""
    total = int(correct.numel())
    rows = [EvaluationRow("clean", None, None, float(correct.float().mean()), total)]
    row_masks = {"clean": correct}
    for name, masks in robust.items():
        attack = attacks[name]
        units = "pixels" if attack.minimum_norm else getattr(attack, "units", None)
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
    medians = {}
    for name, values in tnorms.items():
        values = values[~torch.isnan(values)]
        medians[name] = float(values.median()) if values.numel() else math.nan
    return EvaluationResult(rows=rows, median_tnorm=medians, masks=row_masks)


def evaluate(model, data, attacks, budgets=None, batch_size: int = 256, device=None,
             max_batches: int | None = None, progress: bool = False, on_attack_done=None) -> EvaluationResult:
    """Clean and robust accuracy of ``model`` on ``data`` under each attack at each budget, and
    against the union of the attacks (the worst case per example).

    model: classifier; its mode is restored after each attack (attacks run it in eval mode).
    data: a DataLoader (any iterable of (images, labels) batches) or an (images, labels) tuple of
      tensors, cut into ``batch_size`` batches. Images (N, C, H, W) in [0, 1], integer labels.
      The batches are read once and kept (as given, usually on the CPU) for every attack.
    attacks: {name: attack}, or a sequence of attacks named by class ('FlowPGD'; a class given
      more than once is numbered: 'FlowPGD-1', 'FlowPGD-2', ... in order), or one attack.
      Untargeted attacks built on this ``model`` (the same module, or the module under a
      torch.compile / DataParallel / DistributedDataParallel wrapper; another model is a
      ValueError). 'clean' and 'union' are reserved names.
    budgets: {name: [budget, ...]} or {name: budget} (optional, per attack; a number is one
      budget).
      * FlowPGD (and any attack with ``with_budget``): one run per budget, eps in the attack's
        ``units``.
      * ADef, StAdv (``minimum_norm``): ONE run; the accuracy at budget b (a T-norm in pixels)
        counts an example as robust when it is correct and the attack either failed or needed a
        T-norm > b. Budget-less rows give the accuracy with no norm limit.
      * An attack without budgets runs once at its settings (row budget None).
    device: where to attack (default: the model's). max_batches: stop after that many batches.
    progress: show a progress bar (off by default; total = batches x attack runs, one tick per
      attack run on a batch; ``flowtriton evaluate`` turns it on).
    on_attack_done: ``callable(name, result)`` called after each attack with the
      :class:`EvaluationResult` of the attacks finished so far (write it to disk there, so that a
      failure late in a long run loses nothing).
    Labels: (N,) integer class indices within the model's classes (float labels are a TypeError,
    not truncated). Works inside ``torch.no_grad()``; RuntimeError under ``torch.inference_mode()``.
    An example is robust only if it is classified correctly clean AND the attack did not succeed.
    Returns an :class:`EvaluationResult`: rows (clean first, then per attack in the given order,
    budgets ascending, then with two or more attacks the 'union' rows: budget None = robust
    against every attack run at every budget; budget b (pixels) = robust against every
    minimum-norm attack at T-norm b and every pixel-T-norm FlowPGD run at b, when at least two
    attacks share that budget) and the median successful T-norm of each minimum-norm attack.
    """
    check_grad_mode("evaluate")
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module), got {type(model).__name__}")
    attacks = _name_attacks(attacks)
    plans = _plan(attacks, budgets, model)
    batch_size = check_int(batch_size, "batch_size")
    if on_attack_done is not None and not callable(on_attack_done):
        raise TypeError(f"on_attack_done must be callable, got {type(on_attack_done).__name__}")
    device = torch.device(device) if device is not None else _model_device(model)

    batches = []
    for number, batch in enumerate(_batches(data, batch_size)):
        if max_batches is not None and number >= max_batches:
            break
        batches.append(batch)
    if not batches or sum(int(labels.numel()) for _, labels in batches) == 0:
        raise ValueError("data holds no examples")
    clean = []
    for images, labels in batches:
        _check_batch(images, labels)
        check_unit_range(images, "images")
        with eval_mode(model), torch.no_grad():
            logits = model(images.to(device))
            check_label_range(labels, logits.shape[1])
            clean.append((logits.argmax(dim=1) == labels.to(device)).cpu())
    correct = torch.cat(clean)

    runs = {name: 1 if attacks[name].minimum_norm or not plans[name] else len(plans[name]) for name in attacks}
    bar = tqdm(desc="evaluate", unit="run", total=len(batches) * sum(runs.values()), disable=not progress,
               dynamic_ncols=True)
    robust, needed, tnorms = {}, {}, {}
    try:
        for name, attack in attacks.items():
            values = plans[name]
            masks = {b: [] for b in (values or [None])}
            if attack.minimum_norm:
                norms, medians = [], []
            for (images, labels), ok in zip(batches, clean):
                images, labels = images.to(device), labels.to(device).long()
                if attack.minimum_norm:
                    result = attack.run(images, labels)
                    norm = torch.where(result.success, result.tnorm, torch.full_like(result.tnorm, math.inf)).cpu()
                    for b in masks:
                        fooled = result.success.cpu() if b is None else norm <= b
                        masks[b].append(ok & ~fooled)
                    norms.append(norm)
                    medians.append(torch.where(ok & result.success.cpu(), result.tnorm.cpu(),
                                               torch.full_like(norm, math.nan)))
                    bar.set_postfix(attack=name)
                    bar.update(1)
                else:
                    for b in masks:
                        run = attack if b is None else attack.with_budget(b)
                        masks[b].append(ok & ~run.run(images, labels).success.cpu())
                        bar.set_postfix(attack=name, budget=b)
                        bar.update(1)
            robust[name] = {b: torch.cat(parts) for b, parts in masks.items()}
            if attack.minimum_norm:
                needed[name], tnorms[name] = torch.cat(norms), torch.cat(medians)
            if on_attack_done is not None:
                on_attack_done(name, _table(correct, attacks, robust, needed, tnorms))
    finally:
        bar.close()
    return _table(correct, attacks, robust, needed, tnorms)
