"""RefLiTS: a referring lesion segmentation benchmark built from the real LiTS volume.

Every axial slice with tumours; each 2-D tumour component of at least ``min_area`` pixels gets
expressions that single it out among the slice's lesions, built from what the masks and HU
values show: size rank, position in the liver (upper/lower and left/right *of the image*,
central/near the surface), density relative to the surrounding liver, shape (solidity), and
count ("the only lesion", "all lesions"). Each attribute is a three-valued predicate (true,
false, unsure, with margins); an expression is kept only if it is true for its lesion and
*false* for every other lesion on the slice, so it cannot also fit another one.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import ndimage
from skimage.measure import label, regionprops

from lsms_core.lits import LIVER, TUMOUR, LitsVolume
from lsms_core.windows import DEFAULT_WINDOW

SOFT_TISSUE_WINDOW = DEFAULT_WINDOW.to_record()
Truth = bool | None  # True, False, or None = too close to call


@dataclass
class Lesion:
    """One 2-D tumour component and the measurements its expressions are built from."""

    mask: np.ndarray
    area: int
    centroid: tuple[float, float]  # (row, col) px
    solidity: float
    eccentricity: float
    contrast_hu: float  # mean HU of the lesion minus the mean HU of the liver ring around it
    depth_px: float  # smallest distance of its pixels to the outside of the liver
    facts: dict[str, Truth] = field(default_factory=dict)


@dataclass(frozen=True)
class Attribute:
    """A predicate a lesion may satisfy: its kind (for per-kind evaluation), its facet (two facts
    of one facet never combine: "largest and smallest"), and the words that say it."""

    key: str
    kind: str  # size | position | density | shape | count
    facet: str
    word: str


@dataclass
class Expression:
    text: str
    kinds: list[str]
    mask: np.ndarray
    attributes: dict[str, str]
    lesion_index: int | None  # None for "all lesions"


ATTRIBUTES = {a.key: a for a in [
    Attribute("largest", "size", "size", "largest"),
    Attribute("second_largest", "size", "size", "second largest"),
    Attribute("smallest", "size", "size", "smallest"),
    Attribute("upper", "position", "vertical", "upper"),
    Attribute("lower", "position", "vertical", "lower"),
    Attribute("left", "position", "horizontal", "left"),
    Attribute("right", "position", "horizontal", "right"),
    Attribute("peripheral", "position", "depth", "at the liver surface"),
    Attribute("central", "position", "depth", "deep inside the liver"),
    Attribute("hypodense", "density", "density", "hypodense"),
    Attribute("hyperdense", "density", "density", "hyperdense"),
    Attribute("isodense", "density", "density", "isodense"),
    Attribute("darkest", "density", "darkest", "most hypodense"),
    Attribute("round", "shape", "shape", "round"),
    Attribute("irregular", "shape", "shape", "irregular"),
]}
_SUPERLATIVES = ("largest", "second_largest", "smallest", "darkest")
_ADJECTIVES = ("hypodense", "hyperdense", "isodense", "round", "irregular")
_PLACES = ("upper", "lower", "left", "right")
_DEPTHS = ("peripheral", "central")


def _ternary(value: float, true_if_below: float, false_if_above: float) -> Truth:
    if value <= true_if_below:
        return True
    if value >= false_if_above:
        return False
    return None


def _rank_facts(values: list[float], margin: float, prefix: str, ascending: bool) -> list[dict[str, Truth]]:
    """'Extreme' facts (largest / second largest, or smallest / darkest) with a ratio margin."""
    order = sorted(range(len(values)), key=lambda i: values[i], reverse=not ascending)
    facts: list[dict[str, Truth]] = [{} for _ in values]

    def separated(a: int, b: int) -> bool:
        lo, hi = sorted((values[a], values[b]))
        return hi >= lo * margin if margin > 1 else hi - lo >= -margin

    for rank, name in enumerate(prefix.split(",")):
        if rank >= len(order):
            break
        holder = order[rank]
        clear = all(separated(holder, order[r]) for r in (rank - 1, rank + 1) if 0 <= r < len(order))
        for i in range(len(values)):
            facts[i][name] = (i == holder) if clear else (None if i in order[max(rank - 1, 0):rank + 2] else False)
    return facts


def measure_lesions(hu: np.ndarray, labels: np.ndarray, distractor_area: int) -> list[Lesion]:
    """All tumour components of at least ``distractor_area`` px on one slice, with their facts."""
    liver = labels >= LIVER
    parenchyma = labels == LIVER
    depth_map = ndimage.distance_transform_edt(liver)
    components = label(labels == TUMOUR, connectivity=2)
    lesions = []
    for region in regionprops(components):
        if region.area < distractor_area:
            continue
        mask = components == region.label
        ring = ndimage.binary_dilation(mask, iterations=6) & parenchyma
        ring_hu = float(hu[ring].mean()) if ring.any() else float(hu[parenchyma].mean()) if parenchyma.any() else 0.0
        lesions.append(Lesion(mask, int(region.area), tuple(region.centroid), float(region.solidity),
                              float(region.eccentricity), float(hu[mask].mean()) - ring_hu,
                              float(depth_map[mask].min())))
    if not lesions:
        return lesions
    rows, cols = np.nonzero(liver)
    centre_r, centre_c = rows.mean(), cols.mean()
    margin_r, margin_c = 0.08 * (np.ptp(rows) + 1), 0.08 * (np.ptp(cols) + 1)
    max_depth = float(depth_map.max())
    size_facts = _rank_facts([les.area for les in lesions], 1.25, "largest,second_largest", ascending=False)
    small_facts = _rank_facts([les.area for les in lesions], 1.25, "smallest", ascending=True)
    dark_facts = _rank_facts([les.contrast_hu for les in lesions], -10.0, "darkest", ascending=True)
    for les, sizes, small, dark in zip(lesions, size_facts, small_facts, dark_facts):
        r, c = les.centroid
        reliable_shape = les.area >= 30
        les.facts = {
            **sizes, **small, **dark,
            "upper": _ternary(r - centre_r, -margin_r, margin_r),
            "lower": _ternary(centre_r - r, -margin_r, margin_r),
            "left": _ternary(c - centre_c, -margin_c, margin_c),
            "right": _ternary(centre_c - c, -margin_c, margin_c),
            "peripheral": _ternary(les.depth_px, 2.0, 5.0),
            "central": _ternary(-les.depth_px, -max(0.35 * max_depth, 8.0), -0.2 * max_depth),
            "hypodense": _ternary(les.contrast_hu, -20.0, -5.0),
            "hyperdense": _ternary(-les.contrast_hu, -20.0, -5.0),
            "isodense": _ternary(abs(les.contrast_hu), 8.0, 20.0),
            "round": (True if les.solidity >= 0.9 and les.eccentricity <= 0.8 else
                      False if les.solidity < 0.85 or les.eccentricity > 0.9 else None) if reliable_shape else None,
            "irregular": _ternary(les.solidity, 0.8, 0.88) if reliable_shape else None,
        }
        if les.facts["darkest"] and les.facts["hypodense"] is not True:
            les.facts["darkest"] = None  # "most hypodense" only for a lesion that is hypodense at all
        if len(lesions) == 1:  # no ranks among one: "the only lesion" says it
            les.facts.update(dict.fromkeys(_SUPERLATIVES, None))
    return lesions


def singles_out(target: Lesion, others: list[Lesion], keys: tuple[str, ...]) -> bool:
    """True iff every predicate holds for ``target`` and each other lesion fails at least one."""
    if not all(target.facts.get(k) is True for k in keys):
        return False
    return all(any(other.facts.get(k) is False for k in keys) for other in others)


def _words(keys: tuple[str, ...], group: tuple[str, ...]) -> list[str]:
    return [ATTRIBUTES[k].word for k in group if k in keys]


def short_phrase(keys: tuple[str, ...], noun: str = "lesion") -> str:
    """'the largest hypodense lesion in the upper left part of the liver, at the liver surface'."""
    text = " ".join(["the"] + _words(keys, _SUPERLATIVES) + _words(keys, _ADJECTIVES) + [noun])
    place = _words(keys, _PLACES)
    if place:
        text += f" in the {' '.join(place)} part of the liver"
    depth = _words(keys, _DEPTHS)
    if depth:
        text += f" {depth[0]}" if not place else f", {depth[0]}"
    return text


def long_sentence(keys: tuple[str, ...], noun: str = "lesion") -> str:
    """A RefHL-Seg-like sentence: 'A hypodense round lesion in the upper left part of the liver,
    at the liver surface, the largest on this slice.'"""
    words = _words(keys, _ADJECTIVES) + [noun]
    text = " ".join(["An" if words[0][0] in "aeiou" else "A"] + words)
    place = _words(keys, _PLACES)
    if place:
        text += f" in the {' '.join(place)} part of the liver"
    tail = _words(keys, _DEPTHS)
    superlatives = _words(keys, _SUPERLATIVES)
    if superlatives:
        tail.append(f"the {' and '.join(superlatives)} on this slice")
    return text + "".join(f", {t}" for t in tail) + "."


def expressions_for_slice(hu: np.ndarray, labels: np.ndarray, min_area: int = 20, distractor_area: int = 6,
                          per_lesion: int = 6, rng: random.Random | None = None,
                          lesions: list[Lesion] | None = None) -> list[Expression]:
    """Referring expressions for the lesions of one slice (see the module docstring).
    ``lesions``: ``measure_lesions(hu, labels, distractor_area)`` when the caller already has it."""
    rng = rng or random.Random(0)
    lesions = measure_lesions(hu, labels, distractor_area) if lesions is None else lesions
    expressions: list[Expression] = []
    if not lesions:
        return expressions
    if len(lesions) == 1 and lesions[0].area >= min_area:
        only = lesions[0]
        expressions.append(Expression(rng.choice(["the only lesion", "the only liver lesion on this slice"]),
                                      ["count"], only.mask, {"count": "only"}, 0))
    elif len(lesions) >= 2:
        union = labels == TUMOUR
        expressions.append(Expression(rng.choice(["all lesions", "all liver lesions", "every lesion on this slice"]),
                                      ["count"], union, {"count": "all"}, None))
    for index, target in enumerate(lesions):
        if target.area < min_area:
            continue
        others = lesions[:index] + lesions[index + 1:]
        true_keys = tuple(k for k, v in target.facts.items() if v is True)
        found: list[tuple[str, ...]] = []
        for size in (1, 2):
            for combo in itertools.combinations(true_keys, size):
                if len({ATTRIBUTES[k].facet for k in combo}) < size:
                    continue  # two facts of one facet ("largest" and "second largest") make no phrase
                if singles_out(target, others, combo) and not any(set(f) < set(combo) for f in found):
                    found.append(combo)
        if not found and not others:
            continue
        rng.shuffle(found)
        chosen = found[:max(per_lesion - 1, 1)]
        attributes: dict[str, str] = {}
        for key in true_keys:  # the lesion's structured description, one text per kind
            kind = ATTRIBUTES[key].kind
            attributes[kind] = f"{attributes[kind]}, {ATTRIBUTES[key].word}" if kind in attributes else ATTRIBUTES[key].word
        for combo in chosen:
            text = short_phrase(combo, rng.choice(["lesion", "lesion", "tumour"]))
            expressions.append(Expression(text, sorted({ATTRIBUTES[k].kind for k in combo}), target.mask,
                                          attributes, index))
        if found and singles_out(target, others, true_keys):
            noun = rng.choice(["lesion", "tumour", "liver lesion"])
            expressions.append(Expression(long_sentence(true_keys, noun),
                                          sorted({ATTRIBUTES[k].kind for k in true_keys}), target.mask,
                                          attributes, index))
    return expressions


# Words an "absent" expression may use: those whose False is a clear "no" (superlatives always
# have a holder or an unsure neighbour, so they never fit nothing).
ABSENT_KEYS = ("upper", "lower", "left", "right", "peripheral", "central", "hypodense", "hyperdense", "isodense",
               "round", "irregular")


def absent_expressions(lesions: list[Lesion], rng: random.Random, limit: int = 1,
                       shape: tuple[int, int] | None = None) -> list[Expression]:
    """Up to ``limit`` expressions that fit *no* lesion of the slice: one or two attributes (of
    different facets) such that every lesion has at least one of them clearly False (not merely
    unsure), e.g. "the hyperdense lesion" where every lesion is clearly not hyperdense, or "the
    lesion in the upper left part of the liver" where each lesion is clearly lower or clearly right.
    Their target is an all-zero mask and ``lesion_index`` None. ``shape`` is the mask's (H,W),
    needed only when ``lesions`` is empty.
    """
    if not lesions and shape is None:
        return []
    empty = np.zeros(lesions[0].mask.shape if lesions else shape, dtype=bool)

    def fits_none(combo: tuple[str, ...]) -> bool:
        return all(any(lesion.facts.get(k) is False for k in combo) for lesion in lesions)

    by_size: dict[int, list[tuple[str, ...]]] = {}
    for size in (1, 2):
        for combo in itertools.combinations(ABSENT_KEYS, size):
            if len({ATTRIBUTES[k].facet for k in combo}) == size and fits_none(combo):
                by_size.setdefault(size, []).append(combo)
    expressions: list[Expression] = []
    while by_size and len(expressions) < limit:
        size = rng.choice(sorted(by_size))
        combo = by_size[size].pop(rng.randrange(len(by_size[size])))
        if not by_size[size]:
            del by_size[size]
        attributes: dict[str, str] = {"count": "none"}
        for key in combo:
            kind, word = ATTRIBUTES[key].kind, ATTRIBUTES[key].word
            attributes[kind] = f"{attributes[kind]}, {word}" if kind in attributes else word
        expressions.append(Expression(short_phrase(combo, rng.choice(["lesion", "lesion", "tumour"])),
                                      sorted({ATTRIBUTES[k].kind for k in combo}), empty.copy(), attributes, None))
    return expressions


# Held-out blocks sit between training blocks, so no test or validation slice lies beyond the
# anatomy the model was trained on (a test block at the end of the volume would be extrapolation).
SPLIT_PATTERN = (("train", 14), ("test", 11), ("train", 18), ("val", 12), ("train", 18), ("test", 11), ("train", 14))


def block_splits(n_slices: int, pattern: tuple[tuple[str, int], ...] = SPLIT_PATTERN,
                 gap: int = 5) -> dict[int, tuple[str, int]]:
    """Axial slice index -> (split, block number). Blocks follow ``pattern`` (repeated if the
    volume is longer); ``gap`` slices between blocks are left out of every split."""
    assignment: dict[int, tuple[str, int]] = {}
    position, block = 0, 0
    for split, length in itertools.cycle(pattern):
        if position >= n_slices:
            break
        for z in range(position, min(position + length, n_slices)):
            assignment[z] = (split, block)
        position += length + gap
        block += 1
    return assignment


def resample_plane(volume: LitsVolume, z_centre: float, tilt_rows_deg: float = 0.0,
                   tilt_cols_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The slice on the plane ``z = z_centre + (r - rc) tan(tilt_rows) + (c - cc) tan(tilt_cols)``.

    Returns HU (H,W) float32 (trilinear), labels (H,W) uint8 (nearest) and the plane's z range.
    Zero tilts at a whole z give back the axial slice exactly.
    """
    height, width = volume.hu.shape[1:]
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    z = (z_centre + (rows - (height - 1) / 2) * np.tan(np.radians(tilt_rows_deg))
         + (cols - (width - 1) / 2) * np.tan(np.radians(tilt_cols_deg)))
    coordinates = np.stack([z, rows, cols])
    hu = ndimage.map_coordinates(volume.hu, coordinates, order=1, mode="nearest").astype(np.float32)
    labels = ndimage.map_coordinates(volume.labels, coordinates, order=0, mode="nearest").astype(np.uint8)
    return hu, labels, float(z.min()), float(z.max())


def oblique_planes(z_low: int, z_high: int, count: int, max_tilt_deg: float, height: int, width: int,
                   rng: random.Random) -> list[tuple[float, float, float]]:
    """``count`` random (z_centre, tilt_rows, tilt_cols) planes lying wholly within [z_low, z_high]."""
    planes = []
    for _ in range(count):
        tilt_r, tilt_c = (rng.uniform(-max_tilt_deg, max_tilt_deg) for _ in range(2))
        half = ((height - 1) / 2 * abs(np.tan(np.radians(tilt_r))) + (width - 1) / 2 * abs(np.tan(np.radians(tilt_c))))
        if 2 * half > z_high - z_low:  # too steep for this block: flatten it to fit
            shrink = (z_high - z_low) / (2 * half) * 0.99
            tilt_r, tilt_c = tilt_r * shrink, tilt_c * shrink
            half *= shrink
        planes.append((rng.uniform(z_low + half, z_high - half), tilt_r, tilt_c))
    return planes


def build_reflits(volume: LitsVolume, add: Callable[..., dict], min_area: int = 20, per_lesion: int = 6,
                  gap: int = 5, seed: int = 0, oblique_per_block: int = 0, max_tilt_deg: float = 6.0,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Generate RefLiTS into ``add`` (``AnnotationDataset.add``); returns counts per split.

    ``oblique_per_block`` > 0 adds that many resampled, slightly tilted slices per *training*
    block (each wholly inside its block, expressions generated and checked on the new slice):
    more distinct training images of the same tumours. Validation and test stay the axial
    slices, identical whatever this option is (the extra slices draw from their own RNG).
    """
    rng = random.Random(seed)
    splits = block_splits(len(volume.hu), gap=gap)
    counts = {s: {"slices": 0, "lesions": 0, "expressions": 0} for s in ("train", "val", "test")}
    source = {"dataset": "LiTS (liver-ct-segmentation-package 1.6.0)", "case": volume.case}

    def save(hu, labels, split, block, rng, where) -> None:
        expressions = expressions_for_slice(hu, labels, min_area=min_area, per_lesion=per_lesion, rng=rng)
        if not expressions:
            return
        counts[split]["slices"] += 1
        counts[split]["lesions"] += len({e.lesion_index for e in expressions if e.lesion_index is not None})
        for expression in expressions:
            add(hu, expression.mask, expression.text, split=split, split_group=f"{volume.case}-block{block:02d}",
                patient_key=volume.case, modality="CT", units="HU", window=SOFT_TISSUE_WINDOW,
                attributes=expression.attributes, expression_kinds=expression.kinds,
                source={**source, **where, "lesion": expression.lesion_index}, user="lsms-data build-lits",
                instance=expression.lesion_index)
            counts[split]["expressions"] += 1

    blocks: dict[int, list[int]] = {}
    for z in range(len(volume.hu)):
        if progress is not None:
            progress(z + 1, len(volume.hu))
        if z not in splits:
            continue
        split, block = splits[z]
        blocks.setdefault(block, []).append(z)
        if (volume.labels[z] == TUMOUR).any():
            save(volume.hu[z], volume.labels[z], split, block, rng, {"axial_slice": z})
    extra_rng = random.Random(seed + 1)
    height, width = volume.hu.shape[1:]
    for block, zs in sorted(blocks.items()):
        if splits[zs[0]][0] != "train" or oblique_per_block <= 0:
            continue
        for z_centre, tilt_r, tilt_c in oblique_planes(min(zs), max(zs), oblique_per_block, max_tilt_deg,
                                                       height, width, extra_rng):
            hu, labels, z_min, z_max = resample_plane(volume, z_centre, tilt_r, tilt_c)
            if (labels == TUMOUR).any():
                plane = {"z_centre": z_centre, "tilt_rows_deg": tilt_r, "tilt_cols_deg": tilt_c,
                         "z_min": z_min, "z_max": z_max}  # full precision: the plane can be resampled exactly
                save(hu, labels, "train", block, extra_rng, {"oblique": plane})
    return counts
