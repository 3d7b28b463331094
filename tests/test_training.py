"""lsms-train: recipe, outputs, resume after SIGKILL on the same schedule, torchrun with 2 CPU ranks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lsms_core.checkpoint import read_checkpoint
from lsms_core.config import preset
from lsms_core.dataset import AnnotationDataset
from lsms_core.inference import Segmenter
from lsms_core.model import build_model
from training.config import TrainConfig
from training.trainer import Trainer, parameter_groups, poly_factor

SMALL = ["--preset", "lsms-tiny", "--image-size", "64", "--batch-size", "4", "--lr", "1e-3", "--no-progress"]


def _run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.train_cli", *args], capture_output=True, text=True,
                          timeout=600, **kwargs)


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_poly_schedule_and_no_decay_on_norms():
    assert poly_factor(0, 100, 0.9) == 1.0
    assert poly_factor(50, 100, 0.9) == pytest.approx(0.5 ** 0.9)
    assert poly_factor(100, 100, 0.9) == 0.0
    assert poly_factor(0, 100, 0.9, warmup=10) == pytest.approx(0.1)
    model = build_model(preset("lsms-tiny"))
    decay, plain = parameter_groups(model, 0.01)
    plain_ids = {id(p) for p in plain["params"]}
    assert id(model.backbone.block1[0].norm1.weight) in plain_ids
    assert id(model.backbone.norm4.bias) in plain_ids
    assert id(model.decode_head.squeeze[1].weight) in plain_ids  # GroupNorm
    assert id(model.backbone.block1[0].attn.proj_1.weight) in {id(p) for p in decay["params"]}
    assert plain["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01


def test_paper_recipe_is_the_default():
    config = TrainConfig(dataset="d", output="o")
    assert (config.lr, config.weight_decay, config.poly_power, config.batch_size, config.image_size,
            config.epochs, config.contrastive_weight, config.warmup_iters, config.augment) == \
        (3e-5, 0.01, 0.9, 16, 480, 100, 0.125, 0, False)


def test_training_writes_checkpoints_and_a_json_log(mini_dataset, tmp_path):
    config = TrainConfig(dataset=str(mini_dataset), output=str(tmp_path / "run"), preset="lsms-tiny",
                         image_size=64, epochs=2, batch_size=4, lr=1e-3, model_name="mini")
    summary = Trainer(config, show_progress=False).run()
    log = _log(tmp_path / "run")
    assert [r["event"] for r in log] == ["start", "epoch", "epoch", "end"]
    assert log[0]["iterations"] == 8 and log[0]["batches_per_epoch"] == 4
    for record in log[1:3]:
        assert 0.0 <= record["val_dice"] <= 1.0 and record["val_n"] == 6
        assert record["lr"] == pytest.approx(1e-3 * poly_factor(record["iteration"] - 1, 8, 0.9))
        assert record["train_total"] > 0 and record["images_per_s"] > 0
    assert summary["iterations"] == 8
    best = read_checkpoint(tmp_path / "run" / "best.safetensors")
    assert best.config.preset == "lsms-tiny" and best.config.preprocess.image_size == 64
    assert best.config.text.sha256 and best.extra["name"] == "mini"
    assert best.extra["val"]["n"] == 6
    result = Segmenter(tmp_path / "run" / "last.safetensors", device="cpu").segment(
        AnnotationDataset.open(mini_dataset).read_image(AnnotationDataset.open(mini_dataset).records[0]),
        "the largest lesion", hounsfield=True)
    assert result.mask.shape == (128, 128)


def test_text_free_training(mini_dataset, tmp_path):
    config = TrainConfig(dataset=str(mini_dataset), output=str(tmp_path / "run"), preset="lsms-tiny", use_text=False,
                         image_size=64, epochs=1, batch_size=8, lr=1e-3)
    Trainer(config, show_progress=False).run()
    stored = read_checkpoint(tmp_path / "run" / "last.safetensors")
    assert not stored.config.model.use_text
    assert Segmenter(tmp_path / "run" / "last.safetensors", device="cpu").text_encoder is None


def _state_iteration(run_dir: Path) -> int:
    from safetensors import safe_open

    path = run_dir / "train_state.safetensors"
    if not path.exists():
        return -1
    try:
        with safe_open(str(path), "pt") as handle:
            return json.loads(handle.metadata()["progress"])["iteration"]
    except Exception:  # being replaced at this instant
        return -1


def test_killed_run_resumes_on_the_same_schedule(mini_dataset, tmp_path):
    args = [str(mini_dataset), *SMALL, "--epochs", "3", "--save-every-steps", "1"]
    straight = _run(*args, "-o", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "training.train_cli", *args, "-o", str(killed_dir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _state_iteration(killed_dir) < 6 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(30)
    stopped_at = _state_iteration(killed_dir)
    assert 6 <= stopped_at < 12  # mid-run: epoch 2 or 3 of 3

    resumed = _run(*args, "-o", str(killed_dir), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    log = _log(killed_dir)
    assert any(r["event"] == "resume" for r in log)
    assert log[-1]["event"] == "end" and log[-1]["iterations"] == 12
    final_epoch = [r for r in log if r["event"] == "epoch"][-1]
    assert final_epoch["epoch"] == 3 and final_epoch["iteration"] == 12
    # Same schedule, same data order, same random state: the same weights as the run never killed.
    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(killed_dir / "last.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_resume_without_state_is_a_clear_error(mini_dataset, tmp_path):
    done = _run(str(mini_dataset), *SMALL, "-o", str(tmp_path / "empty"), "--resume")
    assert done.returncode == 2 and "nothing to resume" in done.stderr


def test_torchrun_two_cpu_ranks_agree(mini_dataset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "training.train_cli", str(mini_dataset), *SMALL, "--epochs", "2",
                           "-o", str(tmp_path / "ddp")], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    log = _log(tmp_path / "ddp")
    assert log[0]["world_size"] == 2
    assert log[0]["batches_per_epoch"] == 2  # 16 samples / 2 ranks / batch 4
    end = log[-1]
    assert end["event"] == "end" and end["iterations"] == 4
    checksums = end["rank_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert read_checkpoint(tmp_path / "ddp" / "best.safetensors").config.preset == "lsms-tiny"


def test_sample_cache_is_bounded():
    from training.data import BoundedCache

    cache = BoundedCache(max_bytes=3 * 4 * 100)  # room for three 100-float tensors
    made = []
    for key in range(5):
        cache.get(key, lambda k=key: made.append(k) or torch.full((100,), float(k)))
    assert len(cache._items) == 3 and list(cache._items) == [2, 3, 4]
    assert cache.get(4, lambda: made.append("again") or torch.zeros(100))[0] == 4.0  # a hit: not remade
    assert made == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("change, message", [
    ({"temperature": 0.0}, "--temperature must be a finite number > 0"),
    ({"window_width": float("nan")}, "--window-width must be a finite number"),
    ({"lr": 1e12}, "--lr must be a finite number > 0 and <= 1"),
    ({"batch_size": 0}, "--batch-size must be a whole number >= 1"),
    ({"image_size": 40000}, "--image-size must be a multiple of 32 in 32..2048"),
])
def test_settings_that_cannot_train_are_refused_before_anything_is_written(mini_dataset, tmp_path, change, message):
    settings = {"preset": "lsms-tiny", "image_size": 64, "epochs": 1, "batch_size": 4, "lr": 1e-3, **change}
    config = TrainConfig(dataset=str(mini_dataset), output=str(tmp_path / "run"), **settings)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Trainer(config, show_progress=False)
    assert not (tmp_path / "run").exists()


def test_a_non_finite_loss_stops_training_and_keeps_no_broken_checkpoint(mini_dataset, tmp_path):
    from training.trainer import TrainingDiverged

    config = TrainConfig(dataset=str(mini_dataset), output=str(tmp_path / "run"), preset="lsms-tiny",
                         image_size=64, epochs=2, batch_size=4, lr=1e-3)
    trainer = Trainer(config, show_progress=False)
    real_loss = trainer.loss
    calls = []

    def diverging(output, target):  # finite for the first epoch, then the loss explodes
        terms = real_loss(output, target)
        calls.append(1)
        if len(calls) > 5:
            terms["total"] = terms["total"] * float("inf")
        return terms

    trainer.loss = diverging
    with pytest.raises(TrainingDiverged, match="the loss is"):
        trainer.run()
    best = read_checkpoint(tmp_path / "run" / "best.safetensors")  # epoch 1's, finite
    assert best.extra["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in best.model_state.values() if t.is_floating_point())


def test_a_second_run_into_the_same_folder_needs_resume_or_overwrite(mini_dataset, tmp_path):
    run = tmp_path / "run"
    first = _run(str(mini_dataset), "-o", str(run), *SMALL, "--epochs", "1")
    assert first.returncode == 0, first.stderr
    before = (run / "best.safetensors").read_bytes()
    second = _run(str(mini_dataset), "-o", str(run), *SMALL, "--epochs", "1", "--seed", "3")
    assert second.returncode == 2 and "--resume" in second.stderr and "--overwrite" in second.stderr
    assert (run / "best.safetensors").read_bytes() == before
    third = _run(str(mini_dataset), "-o", str(run), *SMALL, "--epochs", "1", "--seed", "3", "--overwrite")
    assert third.returncode == 0, third.stderr
    assert [r["event"] for r in _log(run)] == ["start", "epoch", "end"]  # the old log went with the old run


def test_grouped_order_puts_different_targets_of_one_slice_together():
    from training.data import grouped_epoch_order

    # slice A: 4 records of 2 lesions; slice B: 3 records of 3 lesions; slice C: one record
    slices = [[(0, "a1"), (1, "a1"), (2, "a2"), (3, "a2")], [(4, "b1"), (5, "b2"), (6, "b3")], [(7, "c1")]]
    keys = {i: k for group in slices for i, k in group}
    slice_of = {i: n for n, group in enumerate(slices) for i, _ in group}
    order = grouped_epoch_order(slices, per_slice=2, batch_size=4, epoch=0, seed=0)
    assert sorted(order) == list(range(8))  # each sample once per epoch
    assert order == grouped_epoch_order(slices, per_slice=2, batch_size=4, epoch=0, seed=0)  # resumable
    assert order != grouped_epoch_order(slices, per_slice=2, batch_size=4, epoch=1, seed=0)
    pairs = [(order[i], order[i + 1]) for i in range(len(order) - 1)
             if slice_of[order[i]] == slice_of[order[i + 1]]]
    assert len(pairs) >= 3 and all(keys[a] != keys[b] for a, b in pairs)
    ranks = [grouped_epoch_order(slices, 2, 2, 0, 0, rank=r, world=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 4 and sorted(ranks[0] + ranks[1]) == list(range(8))


@pytest.mark.parametrize("cut", ["header", "half", "one-byte-short", "metadata"])
def test_resume_from_a_damaged_state_says_so_in_one_line(tmp_path, capsys, cut):
    """Issue 15: ``--resume`` on a truncated train_state.safetensors ended in a SafetensorError traceback."""
    from safetensors.torch import save

    from training.state import STATE_FILE, Progress, save_state
    from training.train_cli import main

    run = tmp_path / "run"
    run.mkdir()
    weights = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(weights.parameters())
    weights(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    path = save_state(run, optimizer, Progress(epoch=1), "{}", weights={"model.w": weights.weight})
    data = path.read_bytes()
    if cut == "metadata":  # intact file, but not one lsms-train wrote
        path.write_bytes(save({"rng.cpu": torch.get_rng_state()}, metadata={"config": "{}"}))
        message = r"the saved state is damaged: its metadata lacks \['progress', 'param_groups'\]"
    else:
        path.write_bytes(data[:{"header": 40, "half": len(data) // 2, "one-byte-short": len(data) - 1}[cut]])
        message = r"the saved state is damaged \(truncated\?\): .*bytes\); resume from an intact copy, or start again"
    assert main([str(tmp_path / "no-dataset-needed"), "-o", str(run), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"lsms-train: error: {run / STATE_FILE}: ")
    assert re.search(message, err), err


def test_fine_tuning_starts_from_the_shipped_model(mini_dataset, tmp_path):
    """--init-checkpoint default --drop-selector: the shipped LSMS weights (its selector left out) start
    a run that trains the LSMS on the expressions themselves."""
    from lsms_core.checkpoint import read_checkpoint as read

    config = TrainConfig(dataset=str(mini_dataset), output=str(tmp_path / "run"), preset="lsms-grounded",
                         image_size=64, epochs=1, batch_size=4, lr=1e-9, init_checkpoint="default", same_slice=2,
                         keep_selector=False)
    trainer = Trainer(config, show_progress=False)
    shipped = read("default").model_state
    start = trainer.model.state_dict()
    assert torch.equal(start["decode_head.conv_seg.weight"], shipped["decode_head.conv_seg.weight"])
    assert not start["backbone.pos_embed1.proj.weight"].any()  # the added position encoding starts at zero
    assert trainer.model.selector is None


def test_fine_tuning_the_shipped_model_keeps_its_selector_and_trains_its_lesion_finder(mini_dataset, tmp_path):
    """--init-checkpoint default (what the widget's Train does): the preset comes from the checkpoint, the
    geometry selector is kept frozen, and the LSMS learns "all lesions" = the union of each slice's masks;
    the written model selects lesions with the unchanged selector."""
    import numpy as np

    from lsms_core.checkpoint import read_checkpoint as read
    from lsms_core.dataset import AnnotationDataset
    from lsms_core.selection import ALL_LESIONS_TEXT
    from training.train_cli import build_parser, config_from_args

    args = build_parser().parse_args([str(mini_dataset), "-o", str(tmp_path / "run"), "--init-checkpoint", "default",
                                      "--image-size", "64", "--epochs", "1", "--batch-size", "4", "--lr", "1e-4",
                                      "--no-progress"])
    config = config_from_args(args)
    assert config.preset == "lsms" and config.keep_selector  # the shipped model's architecture
    trainer = Trainer(config, show_progress=False)
    shipped = read("default").model_state
    selector = {k: v.clone() for k, v in trainer.model.state_dict().items() if k.startswith("selector.")}
    assert selector and all(torch.equal(v, shipped[k]) for k, v in selector.items())
    assert not any(p.requires_grad for p in trainer.model.selector.parameters())
    # the kept selector keeps its closest-match fallback too
    assert trainer.lsms_config.model.selector_fallback == read("default").config.model.selector_fallback is not None
    samples = trainer.train_samples
    dataset = AnnotationDataset.open(mini_dataset)
    slices = {r["image"] for r in dataset.select("train")}
    assert len(samples) == len(slices) and {r["text"] for r in samples.records} == {ALL_LESIONS_TEXT}
    for index, record in enumerate(samples.records):
        union = np.logical_or.reduce([dataset.read_mask(r) > 0 for r in dataset.select("train")
                                      if r["image"] == record["image"]])
        assert np.array_equal(samples.read_mask(index) > 0, union)
    assert any("keeping" in note and "selector" in note for note in trainer.notes)
    trainer.run()
    written = read(tmp_path / "run" / "last.safetensors")
    assert written.config.model.select_lesions and written.config.preset == "lsms+select"
    domain = written.extra["domain"]  # the card's domain: the data's modality, the shipped model's region
    assert domain["modalities"] == ["CT"] and domain["units"] == "HU" and domain["input_size"] == 64
    assert domain["body_regions"] == ["abdomen", "liver"]
    assert all(torch.equal(written.model_state[k].float(), v.float()) for k, v in selector.items())
    changed = written.model_state["decode_head.conv_seg.weight"].float()
    assert not torch.equal(changed, shipped["decode_head.conv_seg.weight"].float())  # the finder trained


def test_channels_last_trains_the_same_model(mini_dataset, tmp_path):
    """NHWC (the default) only changes the memory layout: from one seed, the losses along the run, the
    validation Dice and the trained model's probabilities equal NCHW's up to float rounding."""
    runs = {}
    for layout, channels_last in (("nchw", False), ("nhwc", True)):
        config = TrainConfig(dataset=str(mini_dataset), output=str(tmp_path / layout), preset="lsms-tiny",
                             image_size=64, epochs=1, batch_size=4, lr=1e-3, channels_last=channels_last)
        trainer = Trainer(config, show_progress=False)
        assert trainer.optimizer.defaults["fused"]  # lsms-train's AdamW on this CPU
        trainer.run()
        runs[layout] = _log(tmp_path / layout)
    nchw, nhwc = ([r for r in runs[k] if r["event"] == "epoch"] for k in ("nchw", "nhwc"))
    for a, b in zip(nchw, nhwc):
        assert b["train_total"] == pytest.approx(a["train_total"], rel=1e-3)
        assert b["val_dice"] == pytest.approx(a["val_dice"], abs=0.02)
    dataset = AnnotationDataset.open(mini_dataset)
    image = dataset.read_image(dataset.select("val")[0])
    nchw_out, nhwc_out = (Segmenter(tmp_path / k / "last.safetensors", device="cpu", compiled="off").segment(
        image, "the largest lesion", hounsfield=True) for k in ("nchw", "nhwc"))
    # Adam turns rounding differences of ~1e-7 into weight differences of up to ~lr per step: a few 0.01 of
    # probability after 4 steps at lr 1e-3; a layout bug would change the function itself.
    assert abs(nchw_out.probability - nhwc_out.probability).max() < 0.05
    assert (nchw_out.mask == nhwc_out.mask).mean() >= 0.99
    assert TrainConfig(dataset="d", output="o").channels_last
