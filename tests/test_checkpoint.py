"""Self-describing safetensors checkpoints; pickles refused; MSCAN ImageNet import by key names."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lsms_core.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from lsms_core.config import LSMSConfig, preset
from lsms_core.inference import Segmenter
from lsms_core.model import build_model
from lsms_core.mscan_import import import_mscan


def test_checkpoint_describes_itself(tiny_checkpoint, tiny_config, text_encoder):
    stored = read_checkpoint(tiny_checkpoint)
    assert stored.config.model == tiny_config.model
    assert stored.config.preprocess.image_size == 128
    assert stored.config.text.sha256 == text_encoder.sha256  # encoder identity and hash
    assert stored.config.text.name == "all-MiniLM-L6-v2"
    assert stored.identity["name"] == "tiny-test" and len(stored.identity["sha256"]) == 64


def test_same_mask_on_cpu_before_and_after_save_and_load(tmp_path, tiny_config, text_encoder, lits):
    torch.manual_seed(1)
    config = tiny_config.replace(text=text_encoder.config)
    model = build_model(config.model)
    # Put the BatchNorm statistics somewhere non-trivial, so the test covers buffers too.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 128, 128), torch.randn(4, 6, 384), torch.ones(4, 6))
    first = save_checkpoint(tmp_path / "a.safetensors", model.eval(), config)
    segmenter = Segmenter(first, device="cpu")
    slice_hu = lits.hu[60]
    before = segmenter.segment(slice_hu, "the largest lesion", hounsfield=True)
    # Load, save again, load again: identical weights, identical mask and probabilities.
    reloaded, _ = load_model(first)
    second = save_checkpoint(tmp_path / "b.safetensors", reloaded, config)
    after = Segmenter(second, device="cpu").segment(slice_hu, "the largest lesion", hounsfield=True)
    np.testing.assert_array_equal(before.mask, after.mask)
    np.testing.assert_array_equal(before.probability, after.probability)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, rtol=0, atol=0)


def test_half_precision_storage_loads_as_fp32(tmp_path, tiny_config):
    model = build_model(tiny_config.model).eval()
    path = save_checkpoint(tmp_path / "half.safetensors", model, tiny_config, half=True)
    full = save_checkpoint(tmp_path / "full.safetensors", model, tiny_config)
    assert path.stat().st_size < 0.6 * full.stat().st_size
    loaded, _ = load_model(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = (torch.randn(1, 3, 128, 128), torch.randn(1, 4, 384), torch.ones(1, 4))
    with torch.no_grad():
        torch.testing.assert_close(loaded(*x), model(*x), atol=5e-2, rtol=5e-2)  # fp16 rounding only


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_checkpoint_is_refused_without_running_it(tmp_path):
    _Payload.marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    torch.save({"state_dict": _Payload()}, evil)
    with pytest.raises(CheckpointError, match="pickle"):
        read_checkpoint(evil)
    with pytest.raises(ValueError, match="weights-only"):
        import_mscan(build_model(preset("lsms-tiny")), evil)
    assert not _Payload.marker.exists()


def test_damaged_and_foreign_files_are_refused(tmp_path, tiny_checkpoint):
    data = tiny_checkpoint.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        read_checkpoint(truncated)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not an LSMS checkpoint"):
        read_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.safetensors")


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path, tiny_config):
    model = build_model(preset("lsms-tiny")).eval()
    lying = tiny_config.replace(model=preset("lsms-tiny", conv_units=(7,)))  # another architecture
    path = save_checkpoint(tmp_path / "lying.safetensors", model, lying)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(path)


def test_save_is_atomic_and_keeps_the_old_file_on_failure(tmp_path, tiny_config, monkeypatch):
    model = build_model(tiny_config.model)
    path = save_checkpoint(tmp_path / "m.safetensors", model, tiny_config)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("lsms_core.checkpoint.atomic_write_bytes", fail)
    with pytest.raises(OSError):
        save_checkpoint(path, model, tiny_config)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind


def _official_mscan_t_state() -> dict[str, torch.Tensor]:
    """A state dict with SegNeXt MSCAN-T's official key names and shapes (mscan.py, mscan_t.pth)."""
    widths, depths, ratios = (32, 64, 160, 256), (3, 3, 5, 2), (8, 8, 4, 4)
    g = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}

    def add(name, *shape):
        state[name] = torch.randn(*shape, generator=g)

    def bn(prefix, c):
        add(f"{prefix}.weight", c), add(f"{prefix}.bias", c), add(f"{prefix}.running_mean", c)
        state[f"{prefix}.running_var"] = torch.rand(c, generator=g) + 0.5
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(100)

    add("patch_embed1.proj.0.weight", 16, 3, 3, 3), add("patch_embed1.proj.0.bias", 16)
    bn("patch_embed1.proj.1", 16)
    add("patch_embed1.proj.3.weight", 32, 16, 3, 3), add("patch_embed1.proj.3.bias", 32)
    bn("patch_embed1.proj.4", 32)
    for i in range(4):
        c = widths[i]
        if i:
            add(f"patch_embed{i + 1}.proj.weight", c, widths[i - 1], 3, 3), add(f"patch_embed{i + 1}.proj.bias", c)
            bn(f"patch_embed{i + 1}.norm", c)
        for j in range(depths[i]):
            p = f"block{i + 1}.{j}"
            bn(f"{p}.norm1", c), bn(f"{p}.norm2", c)
            for proj in ("proj_1", "proj_2"):
                add(f"{p}.attn.{proj}.weight", c, c, 1, 1), add(f"{p}.attn.{proj}.bias", c)
            u = f"{p}.attn.spatial_gating_unit"
            add(f"{u}.conv0.weight", c, 1, 5, 5), add(f"{u}.conv0.bias", c)
            for k, d in enumerate((7, 11, 21)):
                add(f"{u}.conv{k}_1.weight", c, 1, 1, d), add(f"{u}.conv{k}_1.bias", c)
                add(f"{u}.conv{k}_2.weight", c, 1, d, 1), add(f"{u}.conv{k}_2.bias", c)
            add(f"{u}.conv3.weight", c, c, 1, 1), add(f"{u}.conv3.bias", c)
            add(f"{p}.layer_scale_1", c), add(f"{p}.layer_scale_2", c)
            h = c * ratios[i]
            add(f"{p}.mlp.fc1.weight", h, c, 1, 1), add(f"{p}.mlp.fc1.bias", h)
            add(f"{p}.mlp.dwconv.dwconv.weight", h, 1, 3, 3), add(f"{p}.mlp.dwconv.dwconv.bias", h)
            add(f"{p}.mlp.fc2.weight", c, h, 1, 1), add(f"{p}.mlp.fc2.bias", c)
        add(f"norm{i + 1}.weight", c), add(f"norm{i + 1}.bias", c)
    add("head.weight", 1000, 256), add("head.bias", 1000)  # ImageNet classifier, not ours
    return state


@pytest.mark.parametrize("style", ["official", "mmseg"])
def test_mscan_t_imagenet_weights_load_by_name(tmp_path, style):
    official = _official_mscan_t_state()
    source = official if style == "official" else {"state_dict": {f"backbone.{k}": v for k, v in official.items()}}
    path = tmp_path / "mscan_t.pth"
    torch.save(source, path)  # a plain tensor checkpoint, as published
    model = build_model(preset("lsms"))
    report = import_mscan(model, path)
    visual = [k for k in official if not k.startswith("head.")]
    assert sorted(report.loaded) == sorted(visual)  # every visual tensor of MSCAN-T loaded
    assert sorted(report.unused) == ["head.bias", "head.weight"]
    assert report.not_covered and all(".language." in k for k in report.not_covered)
    state = model.backbone.state_dict()
    for key in visual:
        torch.testing.assert_close(state[key], official[key].to(state[key].dtype))


def test_mscan_import_reports_shape_mismatches():
    model = build_model(preset("lsms-table1"))  # 64-512 widths do not fit MSCAN-T
    report = import_mscan(model, _official_mscan_t_state())
    assert report.shape_mismatch and "patch_embed1.proj.0.weight" in report.shape_mismatch
    assert "tensors" in report.summary()


def test_atomic_write_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    from lsms_core.atomic import atomic_write_bytes

    target = tmp_path / "file.bin"
    atomic_write_bytes(target, b"old")

    def broken_replace(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]  # the temporary file is gone


def test_atomic_write_gives_normal_permissions(tmp_path):
    import os

    from lsms_core.atomic import atomic_write_bytes

    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_bytes(tmp_path / "f", b"x")
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o666 & ~umask


def _with_stored_config(path, tmp_path, section: str, field: str, value):
    """A copy of checkpoint ``path`` whose stored config says ``section.field = value``."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata())
    config = json.loads(metadata["config"])
    config[section][field] = value
    metadata["config"] = json.dumps(config)
    edited = tmp_path / f"edited-{field}.safetensors"
    save_file(load_file(str(path)), str(edited), metadata=metadata)
    return edited


@pytest.mark.parametrize("section, field, value, message", [
    ("model", "nmf_eval_steps", 1e9, "nmf_eval_steps must be an int"),
    ("model", "nmf_eval_steps", 10 ** 9, "nmf_eval_steps must lie in 0..100"),
    ("model", "widths", [16.0, 32, 64, 96], "widths must be a list of ints"),
    ("model", "widths", [16, 32, 64, 100000], "widths must lie in 2..1024"),
    ("model", "drop_path", "0.1", "drop_path must be a float"),
    ("text", "train_layers", ["all"], "train_layers must be a list of ints"),
    ("preprocess", "image_size", 40000 * 32, "image_size must lie in 32..2048"),
    ("preprocess", "window_width", float("nan"), "window_width must lie in"),
])
def test_config_values_that_would_hang_or_exhaust_memory_are_refused(tmp_path, tiny_checkpoint, section, field,
                                                                     value, message):
    edited = _with_stored_config(tiny_checkpoint, tmp_path, section, field, value)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(edited)


def test_a_huge_file_is_refused_from_its_size_before_reading(tmp_path, monkeypatch):
    import lsms_core.checkpoint as checkpoint

    sparse = tmp_path / "huge.safetensors"
    with open(sparse, "wb") as handle:  # sparse: takes no disk, reads as zeros
        handle.truncate(checkpoint.MAX_CHECKPOINT_BYTES + 1)
    read = []
    monkeypatch.setattr(type(sparse), "read_bytes", lambda self: read.append(self) or b"")
    with pytest.raises(CheckpointError, match="GiB"):
        read_checkpoint(sparse)
    assert not read


def test_stored_configs_share_one_rule_for_unknown_keys(tmp_path):
    """Issue 15: the checkpoint's config refused unknown keys, TrainConfig.from_json dropped them. Both
    now read through config.dataclass_from_dict: unknown keys are an error that names them."""
    import dataclasses

    from lsms_core.config import ConfigError, PreprocessConfig, dataclass_from_dict
    from training.config import TrainConfig

    raw = dataclasses.asdict(PreprocessConfig(image_size=64))
    assert dataclass_from_dict(PreprocessConfig, raw) == PreprocessConfig(image_size=64)
    with pytest.raises(ConfigError, match=r"unknown PreprocessConfig fields \['gamma'\]"):
        dataclass_from_dict(PreprocessConfig, {**raw, "gamma": 2.0})
    with pytest.raises(ConfigError, match="JSON object"):
        dataclass_from_dict(PreprocessConfig, [1, 2])
    stored = json.loads(TrainConfig(dataset="d", output="o", mix=("s",)).to_json())
    assert TrainConfig.from_json(json.dumps(stored)).mix == ("s",)
    with pytest.raises(ConfigError, match=r"unknown TrainConfig fields \['warp_speed'\]"):
        TrainConfig.from_json(json.dumps({**stored, "warp_speed": 9}))


def test_a_failed_atomic_write_names_the_file(tmp_path, monkeypatch):
    """Issue 15: "[Errno 28] No space left on device" without the file name (image/mask writes of add())."""
    import errno
    import os as _os

    from lsms_core.atomic import atomic_write_bytes

    def full(fd):
        raise OSError(errno.ENOSPC, _os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_os, "fsync", full)
    target = tmp_path / "images" / "x.npy"
    target.parent.mkdir()
    with pytest.raises(OSError) as caught:
        atomic_write_bytes(target, b"data")
    assert caught.value.errno == errno.ENOSPC and str(target) in str(caught.value)
    assert not list(target.parent.iterdir())  # no temporary left behind
