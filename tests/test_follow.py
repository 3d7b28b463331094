"""Follow through slices (lsms_core.follow): the rules on hand-made masks, then the real LiTS tumours with
a proposer that knows the truth, and with the default model; volume measurements; the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from lsms_core.follow import SliceProposal, continuing_parts, follow_lesion
from lsms_core.volume_measure import measure_volume


def _disc(shape, centre, radius) -> np.ndarray:
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def _truth_proposer(volume_mask: np.ndarray):
    """Proposes every true lesion on the slice (probability 1 on them)."""
    return lambda z, previous: SliceProposal(volume_mask[z], volume_mask[z].astype(np.float32))


def _dice(a, b) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def _lits_tumours(lits):
    from benchmarks.follow_lits import tumour_components

    return tumour_components(lits.labels)


# --- the rules -------------------------------------------------------------------------------
def test_an_overlapping_part_continues_and_a_grazing_neighbour_does_not():
    previous = _disc((40, 40), (20, 12), 5)
    own = _disc((40, 40), (20, 10), 4)
    big_neighbour = _disc((40, 40), (20, 29), 12)  # overlaps the previous mask's edge by a few pixels
    assert (big_neighbour & previous).any() and not (own & big_neighbour).any()
    kept = continuing_parts(own | big_neighbour, previous, min_overlap=0.1)
    assert np.array_equal(kept, own)


def test_without_overlap_the_nearest_part_within_reach_continues():
    previous = _disc((40, 40), (10, 10), 2)
    near = _disc((40, 40), (10, 15), 1)  # 2 px from the previous mask's edge
    far = _disc((40, 40), (30, 30), 3)
    assert np.array_equal(continuing_parts(near | far, previous, max_distance_px=3), near)
    assert not continuing_parts(far, previous, max_distance_px=3).any()
    assert not continuing_parts(np.zeros((40, 40), bool), previous).any()


def test_follows_a_real_tumour_to_its_ends_with_a_truthful_proposer(lits):
    components, count = _lits_tumours(lits)
    sizes = np.bincount(components.ravel())[1:]
    tumour = components == 1 + int(np.argmax(sizes))  # the largest tumour of the volume
    span = np.flatnonzero(tumour.any(axis=(1, 2)))
    centre = int(span[len(span) // 2])
    steps = []
    result = follow_lesion(tumour.shape, centre, tumour[centre], _truth_proposer(tumour),
                           progress=lambda done, expected: steps.append((done, expected)))
    # The 3-D component is 26-connected: a part that only touches the next slice's diagonally, or a branch
    # that joins it elsewhere, is not followed. Measured: slices 65-114 of 60-114, Dice 0.964.
    assert not (result.mask & ~tumour).any()
    assert _dice(result.mask, tumour) >= 0.95
    assert result.slices == list(range(result.slices[0], span[-1] + 1)) and result.slices[0] <= span[0] + 5
    assert {s.reason for s in result.stops.values()} <= {"no continuing part", "end of volume"}
    assert steps[-1][0] == steps[-1][1] == len(result.slices) - 1 + sum(
        s.reason == "no continuing part" for s in result.stops.values())


def test_another_lesion_stacked_on_the_ending_one_is_not_followed():
    shape = (9, 40, 40)
    volume = np.zeros(shape, bool)
    for z, radius in zip(range(0, 5), (6, 6, 5, 3, 1)):  # the lesion ends at slice 4 ...
        volume[z] = _disc(shape[1:], (20, 20), radius)
    for z in range(5, 9):  # ... and a larger one starts right under its tip
        volume[z] = _disc(shape[1:], (20, 21), 8)
    result = follow_lesion(shape, 0, volume[0], _truth_proposer(volume))
    assert result.slices == [0, 1, 2, 3, 4]
    assert result.stops["up"] == type(result.stops["up"])(5, "another lesion begins")
    assert result.stops["down"].reason == "end of volume"


def test_low_probability_stops_and_cancel_keeps_what_was_followed():
    shape = (11, 30, 30)
    lesion = np.zeros(shape, bool)
    lesion[:] = _disc(shape[1:], (15, 15), 5)

    def faint(z, previous):  # confident on slices 3-7 only
        return SliceProposal(lesion[z], np.full(shape[1:], 0.9 if abs(z - 5) <= 2 else 0.3, np.float32))

    result = follow_lesion(shape, 5, lesion[5], faint, min_probability=0.5)
    assert result.slices == [3, 4, 5, 6, 7]
    assert {s.reason for s in result.stops.values()} == {"low probability"}
    calls = []

    def counting(z, previous):
        calls.append(z)
        return SliceProposal(lesion[z], np.ones(shape[1:], np.float32))

    result = follow_lesion(shape, 5, lesion[5], counting, cancelled=lambda: len(calls) >= 2)
    assert result.cancelled and result.slices == [4, 5, 6] and len(calls) == 2
    assert result.mask[4].any() and not result.mask[3].any()


def test_bad_seeds_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match="empty"):
        follow_lesion((3, 8, 8), 1, np.zeros((8, 8), bool), _truth_proposer(np.zeros((3, 8, 8), bool)))
    with pytest.raises(ValueError, match="out of range"):
        follow_lesion((3, 8, 8), 3, np.ones((8, 8), bool), _truth_proposer(np.zeros((3, 8, 8), bool)))
    with pytest.raises(ValueError, match="the volume's slices"):
        follow_lesion((3, 8, 8), 1, np.ones((9, 8), bool), _truth_proposer(np.zeros((3, 8, 8), bool)))


# --- the default model on a real tumour -------------------------------------------------------
def test_the_default_model_follows_a_test_block_tumour(lits):
    from benchmarks.follow_lits import test_block_tumours
    from lsms_core.follow_engines import make_proposer
    from lsms_core.inference import Segmenter

    tumour = max(test_block_tumours(lits.labels), key=lambda t: int(t.sum()))  # slices 96-112
    span = np.flatnonzero(tumour.any(axis=(1, 2)))
    centre = int(span[len(span) // 2])
    propose = make_proposer("lesions", lits.hu, True, Segmenter("default", device="cpu"))
    result = follow_lesion(lits.hu.shape, centre, tumour[centre], propose)
    assert _dice(result.mask, tumour) >= 0.75  # measured 0.849 (benchmarks/follow_lits.py)
    assert len(result.slices) >= 8 and set(result.slices) <= set(span.tolist())


# --- volume measurements ------------------------------------------------------------------------
def test_volume_measurements_of_a_ball_in_mm_and_in_voxels():
    spacing, step = (0.5, 0.5), 2.0
    z, r, c = np.ogrid[-10:11, -40:41, -40:41]
    radius = 10.0  # mm
    ball = (z * step) ** 2 + (r * spacing[0]) ** 2 + (c * spacing[1]) ** 2 <= radius ** 2
    image = np.where(ball, 40.0, -100.0)
    measured = measure_volume(ball, spacing, step, image, hounsfield=True)
    assert measured.in_mm and measured.slices == 11 and (measured.first_slice, measured.last_slice) == (5, 15)
    assert measured.volume == pytest.approx(4 / 3 * np.pi * radius ** 3 / 1000, rel=0.05)  # 4.19 mL
    assert measured.longest == pytest.approx(2 * radius, abs=1.0) and measured.longest_slice == 10
    assert measured.short_axis == pytest.approx(2 * radius, abs=1.0)
    assert measured.mean == 40.0 and measured.sd == 0.0
    assert "mL" in measured.summary() and "slice 10" in measured.summary()
    in_px = measure_volume(ball)
    assert not in_px.in_mm and in_px.volume == ball.sum() and "spacing unknown" in in_px.summary()
    assert measure_volume(np.zeros((2, 4, 4), bool)).summary() == "empty mask"
    with pytest.raises(ValueError, match="Z,H,W"):
        measure_volume(np.zeros((4, 4), bool))


# --- lsms-segment --follow ----------------------------------------------------------------------
def _segment_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lsms_core.cli.segment", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


def test_command_line_follows_through_a_volume_into_npy_and_nifti(lits, tmp_path):
    import nibabel

    block = lits.hu[20:40]  # slices 20-39: tumour 1 of the benchmark lies on 26-31, "the only lesion" on 29
    volume = tmp_path / "block.npy"
    np.save(volume, block)
    done = _segment_cli(volume, "--slice", 9, "--text", "the only lesion", "--follow", "--units", "hu",
                        "--device", "cpu", "-o", tmp_path / "mask.npy", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    mask = np.load(tmp_path / "mask.npy")
    assert mask.shape == block.shape and mask.dtype == np.uint8
    truth = (lits.labels[20:40] == 2)
    components, _ = ndimage.label(truth, structure=np.ones((3, 3, 3), bool))
    tumour = components == components[9][truth[9]].max()
    assert _dice(mask > 0, tumour) >= 0.4  # measured 0.49: the model's seed mask is twice the tumour there
    assert report["slices"] == [int(z) for z in np.flatnonzero(mask.any(axis=(1, 2)))]
    assert report["measurements"]["voxels"] == int(mask.sum()) and "volume_voxels" in report["measurements"]
    done = _segment_cli(volume, "--slice", 9, "--text", "the only lesion", "--follow", "--units", "hu",
                        "--device", "cpu", "-o", tmp_path / "mask.nii.gz", "--no-progress")
    assert done.returncode == 0, done.stderr
    stored = nibabel.load(tmp_path / "mask.nii.gz")
    from lsms_core.volume_io import read_volume

    assert np.array_equal(read_volume(tmp_path / "mask.nii.gz", hounsfield=False).pixels > 0, mask > 0)
    assert stored.shape[::-1] == mask.shape or sorted(stored.shape) == sorted(mask.shape)


@pytest.mark.parametrize("args, message", [
    (["--text", "the only lesion", "--follow"], "--slice"),
    (["--text", "the only lesion", "--follow", "--slice", "99"], "outside the volume"),
    (["--text", "the only lesion", "--follow", "--slice", "1", "-o-suffix", "mask.png"], ".nii.gz"),
    (["--text", "the only lesion", "--slice", "1"], "go with --follow"),
])
def test_command_line_follow_errors_say_what_to_do(tmp_path, args, message):
    volume = tmp_path / "v.npy"
    np.save(volume, np.full((3, 16, 16), -100.0, np.float32))
    if "-o-suffix" in args:
        output = tmp_path / args[args.index("-o-suffix") + 1]
        args = args[:args.index("-o-suffix")]
    else:
        output = tmp_path / "mask.npy"
    done = _segment_cli(volume, *args, "--units", "hu", "--device", "cpu", "-o", output)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not output.exists()
