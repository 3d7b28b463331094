"""The compiled inference path (lsms_core.compiled: LSMS through ONNX Runtime on the CPU): the same masks as
eager PyTorch on real LiTS slices, cached per checkpoint and input size, rebuilt for another checkpoint, a
damaged cache refused, built in the background while eager serves, eager where ONNX Runtime is missing; and the
PyTorch-free path (lsms_core.quick): the same masks and matches, only from its own graphs, lsms-segment
without importing torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsms_core import compiled
from lsms_core.inference import Segmenter

SLICES = (40, 64, 100)
TEXTS = ("all lesions", "the largest lesion", "the smallest lesion", "the lesion in the upper left part of the liver")


@pytest.fixture(scope="module")
def default_pair(tmp_path_factory):
    """(eager, compiled) Segmenters of the default model; the graph built into a fresh cache."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LSMS_CACHE_DIR", str(cache))
        eager = Segmenter("default", "cpu", compiled="off")
        built = Segmenter("default", "cpu", compiled="build")
    return eager, built, cache


def test_the_compiled_default_model_gives_the_eager_masks_on_real_slices(default_pair, lits):
    eager, built, cache = default_pair
    assert (eager.runtime, built.runtime) == ("pytorch", "onnxruntime")
    assert built.describe()["runtime"] == "onnxruntime"
    size = built.checkpoint.config.preprocess.image_size
    assert [p.name for p in (cache / "compiled").iterdir()] == [compiled.artefact_path(built.checkpoint.sha256,
                                                                                      size).name]
    equal = total = 0
    worst = 0.0
    for z in SLICES:
        for text in TEXTS:  # the default model: its finder's pass, then the selector on the candidates
            a = eager.segment(lits.hu[z], text, hounsfield=True)
            b = built.segment(lits.hu[z], text, hounsfield=True)
            equal += int((a.mask == b.mask).sum())
            total += a.mask.size
            worst = max(worst, float(np.abs(a.probability - b.probability).max()))
    assert equal / total >= 0.999 and worst <= 1e-3  # measured: every pixel equal, 2.6e-6


def test_the_cache_serves_its_checkpoint_and_no_other(default_pair, tiny_checkpoint, monkeypatch, lits):
    eager, built, cache = default_pair
    monkeypatch.setenv("LSMS_CACHE_DIR", str(cache))
    monkeypatch.delenv("LSMS_COMPILED")
    assert Segmenter("default", "cpu").runtime == "onnxruntime"  # "auto": the cached graph, nothing built
    monkeypatch.setenv("LSMS_COMPILED", "off")
    assert Segmenter("default", "cpu").runtime == "pytorch"
    monkeypatch.delenv("LSMS_COMPILED")
    assert Segmenter(tiny_checkpoint, "cpu").runtime == "pytorch"  # another checkpoint: not cached yet
    tiny = Segmenter(tiny_checkpoint, "cpu", compiled="build")
    assert tiny.runtime == "onnxruntime" and len(list((cache / "compiled").glob("*.onnx"))) == 2
    reference = Segmenter(tiny_checkpoint, "cpu", compiled="off").segment(lits.hu[64], "a lesion", hounsfield=True)
    np.testing.assert_allclose(tiny.segment(lits.hu[64], "a lesion", hounsfield=True).probability,
                               reference.probability, atol=1e-3)
    with pytest.raises(ValueError, match="one 128x128 image"):
        tiny._compiled.runner(torch.zeros(1, 3, 64, 64), torch.zeros(1, 4, 384), torch.ones(1, 4))


def test_a_damaged_cached_graph_falls_back_to_eager_and_is_removed(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("LSMS_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LSMS_COMPILED")
    eager = Segmenter(tiny_checkpoint, "cpu", compiled="off")
    path = compiled.artefact_path(eager.checkpoint.sha256, 128)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an onnx graph")
    with pytest.warns(UserWarning, match="running eager PyTorch"):
        segmenter = Segmenter(tiny_checkpoint, "cpu")
    assert segmenter.runtime == "pytorch" and not path.exists()


def test_the_graph_is_built_in_the_background_while_eager_serves(tiny_checkpoint, tmp_path, monkeypatch, lits):
    from lsms_core.quick import QuickSegmenter

    monkeypatch.setenv("LSMS_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LSMS_COMPILED")
    segmenter = Segmenter(tiny_checkpoint, "cpu")
    before = segmenter.segment(lits.hu[64], "a lesion", hounsfield=True)
    thread = segmenter.compile_in_background()
    assert thread is not None and segmenter.runtime == "pytorch"
    segmenter.segment(lits.hu[70], "a lesion", hounsfield=True)  # served eager meanwhile
    thread.join(timeout=300)
    assert segmenter.runtime == "onnxruntime" and segmenter.compile_in_background() is None
    assert QuickSegmenter.open(tiny_checkpoint) is not None  # and the PyTorch-free path's graphs, after LSMS's
    after = segmenter.segment(lits.hu[64], "a lesion", hounsfield=True)
    np.testing.assert_allclose(after.probability, before.probability, atol=1e-3)


def test_without_onnx_runtime_it_stays_eager(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("LSMS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compiled, "available", lambda build=False: False)
    segmenter = Segmenter(tiny_checkpoint, "cpu", compiled="build")
    assert segmenter.runtime == "pytorch" and segmenter.compile_in_background() is None
    with pytest.raises(ValueError, match="compiled must be one of"):
        Segmenter(tiny_checkpoint, "cpu", compiled="fast")


def test_the_prompt_models_encoder_compiled_gives_the_same_masks(tmp_path, monkeypatch, lits):
    from lsms_core.prompt import PromptSegmenter
    from lsms_core.prompt.prompt_model import ENCODER_PART, IMAGE_SIZE

    monkeypatch.setenv("LSMS_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LSMS_COMPILED")
    eager = PromptSegmenter(device="cpu", compiled="off")
    assert PromptSegmenter(device="cpu").runtime == "pytorch"  # nothing cached yet
    thread = eager.compile_in_background()
    assert thread is None  # "off" builds nothing
    built = PromptSegmenter(device="cpu")
    thread = built.compile_in_background()
    thread.join(timeout=300)
    assert built.runtime == "onnxruntime"
    assert compiled.artefact_path(built.identity["sha256"], IMAGE_SIZE, ENCODER_PART).exists()
    assert PromptSegmenter(device="cpu").runtime == "onnxruntime"  # from the cache
    equal = total = 0
    for z, box in ((64, (40, 50, 70, 80)), (100, (30, 30, 90, 90))):
        for segmenter in (eager, built):
            segmenter.set_image(lits.hu[z], hounsfield=True)
        a, pa = eager.predict(box=box)
        b, pb = built.predict(box=box)
        equal += int((a == b).sum())
        total += a.size
        assert float(np.abs(pa - pb).max()) <= 1e-3
    assert equal / total >= 0.999


@pytest.fixture(scope="module")
def quick_cache(default_pair):
    """default_pair's cache with the PyTorch-free path's graphs and manifest written (lsms_core.quick_build)."""
    from lsms_core.quick_build import write_quick_start

    eager, built, cache = default_pair
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LSMS_CACHE_DIR", str(cache))
        manifest = write_quick_start(built)
    return cache, manifest


def test_the_pytorch_free_path_gives_the_eager_masks_and_matches(default_pair, quick_cache, monkeypatch, lits):
    from lsms_core.quick import QuickSegmenter

    eager, _, _ = default_pair
    cache, manifest = quick_cache
    monkeypatch.setenv("LSMS_CACHE_DIR", str(cache))
    sha = eager.checkpoint.sha256[:16]
    assert manifest.exists() and len(list((cache / "compiled").glob(f"{sha}-*.onnx"))) == 3  # LSMS, text, selector
    quick = QuickSegmenter.open("default")
    assert quick is not None and quick.describe()["pytorch"] is False
    assert quick.identity == eager.identity
    equal = total = 0
    worst = 0.0
    for z in SLICES:
        for text in TEXTS + ("no lesion near the heart",):
            a = eager.segment(lits.hu[z], text, hounsfield=True)
            b = quick.segment(lits.hu[z], text, hounsfield=True)
            equal += int((a.mask == b.mask).sum())
            total += a.mask.size
            worst = max(worst, float(np.abs(a.probability - b.probability).max()))
            assert a.notes == b.notes and len(a.matches.choices()) == len(b.matches.choices())
            assert all((x == y).all() for x, y in zip(a.matches.choices(), b.matches.choices()))
    assert equal / total >= 0.999 and worst <= 1e-3  # measured: every pixel equal, 3.6e-6


def test_the_pytorch_free_path_needs_its_own_graphs(default_pair, quick_cache, tmp_path, monkeypatch):
    import shutil

    from lsms_core.quick import QuickSegmenter
    from lsms_core.text_encoder import default_text_encoder_path

    cache, manifest = quick_cache
    monkeypatch.setenv("LSMS_CACHE_DIR", str(tmp_path / "empty"))
    assert QuickSegmenter.open("default") is None  # nothing built on this cache
    monkeypatch.setenv("LSMS_CACHE_DIR", str(cache))
    other = shutil.copytree(default_text_encoder_path(), tmp_path / "encoder")
    assert QuickSegmenter.open("default", text_encoder_path=other) is None  # another folder: its own graphs
    assert QuickSegmenter.open("default", text_encoder_path=tmp_path / "missing") is None  # Segmenter says why
    pickle = tmp_path / "model.pt"
    pickle.write_bytes(b"\x80\x04not a checkpoint")
    assert QuickSegmenter.open(pickle) is None  # Segmenter refuses it with its own message
    assert QuickSegmenter.open("default") is not None


def test_a_damaged_quick_start_graph_falls_back_to_pytorch(default_pair, quick_cache, tmp_path, monkeypatch):
    from lsms_core.quick import QuickSegmenter

    cache, manifest = quick_cache
    copy = tmp_path / "compiled"
    copy.mkdir()
    for path in (cache / "compiled").iterdir():
        (copy / path.name).symlink_to(path)
    monkeypatch.setenv("LSMS_CACHE_DIR", str(tmp_path))
    assert QuickSegmenter.open("default") is not None
    selector = next(copy.glob("*-selector-*.onnx"))
    selector.unlink()
    selector.write_bytes(b"not an onnx graph")
    (copy / manifest.name).unlink()
    (copy / manifest.name).write_bytes(manifest.read_bytes())
    with pytest.warns(UserWarning, match="do not load; running PyTorch"):
        assert QuickSegmenter.open("default") is None
    assert not (copy / manifest.name).exists()  # refused once, then rebuilt by the next build
    assert manifest.exists()  # the real cache untouched


def test_lsms_segment_runs_without_importing_pytorch(quick_cache, tmp_path, lits):
    import json
    import os
    import subprocess
    import sys

    from PIL import Image

    cache, _ = quick_cache
    np.save(tmp_path / "slice.npy", lits.hu[64])
    code = ("import sys\nfrom lsms_core.cli.segment import main\n"
            "rc = main(sys.argv[1:])\nprint('torch loaded' if 'torch' in sys.modules else 'no torch')\nsys.exit(rc)")
    outputs = {}
    for compiled_mode in ("auto", "off"):
        output = tmp_path / f"{compiled_mode}.png"
        environment = {**os.environ, "LSMS_CACHE_DIR": str(cache), "LSMS_COMPILED": ""}
        run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "slice.npy"), "--units", "hu", "--text",
                              "the largest lesion", "-o", str(output), "--json", "--device", "cpu",
                              "--compiled", compiled_mode], capture_output=True, text=True, env=environment,
                             timeout=300)
        assert run.returncode == 0, run.stderr
        report, loaded = run.stdout.strip().splitlines()
        assert json.loads(report)["model"]["pytorch"] is (compiled_mode == "off")
        assert loaded == ("no torch" if compiled_mode == "auto" else "torch loaded")
        outputs[compiled_mode] = np.asarray(Image.open(output))
    assert outputs["auto"].any() and (outputs["auto"] == outputs["off"]).mean() >= 0.999


def test_the_quick_start_is_only_taken_where_no_cuda_gpu_may_be(monkeypatch):
    from lsms_core import quick

    for hidden in ("", "-1"):  # GPUs hidden: the CPU is what runs, so the quick start may be taken
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert quick.cuda_may_be_present() is False
