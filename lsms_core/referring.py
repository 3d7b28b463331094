"""Referring metrics: does the mask land on the lesion the words name?

Mean Dice hides a model that marks every tumour whatever the text says. These figures are
computed only for *referring cases*: an expression whose target mask is one lesion instance
on a slice that has two or more lesion instances.

- **hit**: IoU(prediction, named lesion) >= 0.5 *and* the named lesion holds more predicted
  pixels than any other instance;
- **pointing**: the named lesion holds more predicted pixels than any other instance (an
  empty prediction, or one on no lesion, does not point);
- **leak**: the share of the predicted pixels that lie on instances the text did not name
  (0 for an empty prediction: nothing leaked, and hit and pointing already count it as a miss).

Instances of a slice come from the dataset: annotations that carry an ``instance`` number
(RefLiTS, the synthetic builder, the plugin when the user accepts one lesion) define that
instance's pixels; every other foreground pixel of the slice (the union of all its masks)
is split into its 8-connected components, each one more instance. Without any instance
numbers this is exactly "connected components of the union of the slice's masks".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
from scipy import ndimage

IOU_FOR_HIT = 0.5
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def instance_map(masks: Iterable[np.ndarray], instances: Iterable[int | None]) -> np.ndarray:
    """Label image (H,W) int32 of one slice's lesion instances: 0 background, 1..K instances.

    ``masks`` are the slice's annotation masks (H,W) and ``instances`` their stored instance
    numbers (None when unknown). Annotations with a number paint their instance; the rest of
    the union is split into 8-connected components.
    """
    masks = [np.asarray(m, dtype=bool) for m in masks]
    if not masks:
        raise ValueError("a slice needs at least one mask")
    labels = np.zeros(masks[0].shape, dtype=np.int32)
    union = np.zeros(masks[0].shape, dtype=bool)
    numbered: dict[int, int] = {}
    for mask, instance in zip(masks, instances, strict=True):
        union |= mask
        if instance is not None:
            labels[mask & (labels == 0)] = numbered.setdefault(instance, len(numbered) + 1)
    rest, count = ndimage.label(union & (labels == 0), structure=_EIGHT_CONNECTED)
    labels[rest > 0] = rest[rest > 0] + len(numbered)
    return labels


def named_instance(target: np.ndarray, labels: np.ndarray) -> int | None:
    """The instance label a target mask names, or None when it covers none or several."""
    touched = np.unique(labels[np.asarray(target, dtype=bool)])
    touched = touched[touched > 0]
    return int(touched[0]) if len(touched) == 1 else None


@dataclass(frozen=True)
class ReferringOutcome:
    hit: bool
    pointing: bool
    leak: float


def score_referring(prediction: np.ndarray, labels: np.ndarray, named: int) -> ReferringOutcome:
    """Hit, pointing and leak of one binary prediction (H,W) for instance ``named`` of ``labels``."""
    pred = np.asarray(prediction, dtype=bool)
    if pred.shape != labels.shape:
        raise ValueError(f"prediction {pred.shape} and instance map {labels.shape} differ in shape")
    per_instance = np.bincount(labels[pred], minlength=int(labels.max()) + 1)
    per_instance[0] = 0
    on_named = int(per_instance[named])
    others = np.delete(per_instance, [0, named])
    most_elsewhere = int(others.max()) if others.size else 0
    pointing = on_named > 0 and on_named > most_elsewhere
    named_area = int(np.count_nonzero(labels == named))
    iou = on_named / (np.count_nonzero(pred) + named_area - on_named) if pred.any() else 0.0
    predicted = int(np.count_nonzero(pred))
    leak = float(others.sum()) / predicted if predicted else 0.0
    return ReferringOutcome(hit=pointing and iou >= IOU_FOR_HIT, pointing=pointing, leak=leak)


@dataclass
class ReferringScores:
    """Referring outcomes in the order added, overall and per expression kind."""

    outcomes: list[ReferringOutcome] = field(default_factory=list)
    per_kind: dict[str, list[ReferringOutcome]] = field(default_factory=lambda: defaultdict(list))

    def add(self, outcome: ReferringOutcome, kinds: Iterable[str] = ()) -> None:
        self.outcomes.append(outcome)
        for kind in kinds:
            self.per_kind[kind].append(outcome)

    @staticmethod
    def _summary(outcomes: list[ReferringOutcome]) -> dict[str, float | int]:
        if not outcomes:  # None (JSON null), not NaN: no referring case, nothing to report
            return {"hit_rate": None, "pointing": None, "leak": None, "n_referring": 0}
        return {"hit_rate": float(np.mean([o.hit for o in outcomes])),
                "pointing": float(np.mean([o.pointing for o in outcomes])),
                "leak": float(np.mean([o.leak for o in outcomes])), "n_referring": len(outcomes)}

    def summary(self) -> dict[str, float | int]:
        return self._summary(self.outcomes)

    def kind_summary(self, kind: str) -> dict[str, float | int]:
        return self._summary(self.per_kind.get(kind, []))


def referring_instances(records: list[dict], read_mask: Callable[[dict], np.ndarray]) -> dict[str, tuple[np.ndarray, int]]:
    """Record id -> (instance map of its slice, named instance) for every referring case.

    ``records`` are annotation records (all that share a slice must be among them: pass a whole
    split); ``read_mask`` reads one record's mask. A record is a referring case when its slice
    has >= 2 instances and its mask names exactly one of them.
    """
    by_image: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_image[record["image"]].append(record)
    cases: dict[str, tuple[np.ndarray, int]] = {}
    for group in by_image.values():
        masks = [read_mask(r) for r in group]
        if len({m.shape for m in masks}) > 1:
            continue  # masks of one image must agree in size; the validator reports it
        labels = instance_map(masks, [r.get("instance") for r in group])
        if labels.max() < 2:
            continue
        for record, mask in zip(group, masks):
            named = named_instance(mask, labels)
            if named is not None:
                cases[record["id"]] = (labels, named)
    return cases
