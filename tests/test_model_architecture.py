"""The architecture of MODEL.md, pinned: shapes, SVLA == MSCA without text, masking, NMF, budgets."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lsms_core.complexity import count_model
from lsms_core.config import LSMSConfig, ModelConfig, preset
from lsms_core.losses import LSMSLoss
from lsms_core.model import build_model
from lsms_core.model.decoder import NMF2D
from lsms_core.model.svla import SVLA


def _words(batch: int, tokens: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, dim, generator=g), torch.ones(batch, tokens)


@pytest.mark.parametrize("size", [96, 160])
def test_stage_shapes_at_two_sizes(size):
    config = preset("lsms")
    model = build_model(config).eval()
    image = torch.randn(2, 3, size, size)
    words, mask = _words(2, 7, config.text_dim)
    with torch.no_grad():
        stages = model.stage_features(image, words, mask)
        out = model.forward_features(image, words, mask)
    for i, (feature, width) in enumerate(zip(stages, config.widths), start=1):
        stride = 2 ** (i + 1)
        assert feature.shape == (2, width, size // stride, size // stride), f"F{i}"
    assert out.logits.shape == (2, 1, size, size)
    assert out.embedding.shape == (2, config.decoder_channels, size // 4, size // 4)  # FSD at F1's size
    assert out.sentence.shape == (2, config.decoder_channels)


def test_budget_preset_decodes_at_one_eighth():
    model = build_model(preset("lsms-budget")).eval()
    words, mask = _words(1, 5, 384)
    with torch.no_grad():
        out = model.forward_features(torch.randn(1, 3, 128, 128), words, mask)
    assert out.embedding.shape == (1, 256, 16, 16)


class ReferenceMSCA(nn.Module):
    """SegNeXt's AttentionModule (mscan.py) transcribed as the oracle."""

    def __init__(self, dim):
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv0_1 = nn.Conv2d(dim, dim, (1, 7), padding=(0, 3), groups=dim)
        self.conv0_2 = nn.Conv2d(dim, dim, (7, 1), padding=(3, 0), groups=dim)
        self.conv1_1 = nn.Conv2d(dim, dim, (1, 11), padding=(0, 5), groups=dim)
        self.conv1_2 = nn.Conv2d(dim, dim, (11, 1), padding=(5, 0), groups=dim)
        self.conv2_1 = nn.Conv2d(dim, dim, (1, 21), padding=(0, 10), groups=dim)
        self.conv2_2 = nn.Conv2d(dim, dim, (21, 1), padding=(10, 0), groups=dim)
        self.conv3 = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        u = x.clone()
        attn = self.conv0(x)
        attn_0 = self.conv0_2(self.conv0_1(attn))
        attn_1 = self.conv1_2(self.conv1_1(attn))
        attn_2 = self.conv2_2(self.conv2_1(attn))
        return self.conv3(attn + attn_0 + attn_1 + attn_2) * u


def test_svla_without_text_equals_msca():
    torch.manual_seed(0)
    svla = SVLA(32, text_dim=None)
    reference = ReferenceMSCA(32)
    reference.load_state_dict(svla.state_dict(), strict=True)  # same names, same shapes
    x = torch.randn(2, 32, 24, 20)
    torch.testing.assert_close(svla(x), reference(x))


def test_language_branch_changes_svla_output():
    torch.manual_seed(0)
    svla = SVLA(32, text_dim=16)
    x = torch.randn(1, 32, 12, 12)
    a, mask = _words(1, 4, 16, seed=1)
    b, _ = _words(1, 4, 16, seed=2)
    assert not torch.allclose(svla(x, a, mask), svla(x, b, mask))


def test_padded_tokens_change_nothing():
    torch.manual_seed(0)
    model = build_model(preset("lsms-tiny")).eval()
    image = torch.randn(1, 3, 64, 64)
    words, mask = _words(1, 5, 384)
    padded_words = torch.cat([words, 100 * torch.randn(1, 6, 384)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 6)], dim=1)
    with torch.no_grad():
        plain = model.forward_features(image, words, mask)
        padded = model.forward_features(image, padded_words, padded_mask)
    torch.testing.assert_close(plain.logits, padded.logits)
    torch.testing.assert_close(plain.sentence, padded.sentence)


def test_text_free_model_ignores_words():
    model = build_model(preset("lsms-tiny", use_text=False)).eval()
    assert model.sentence_proj is None
    assert not any("language" in name for name, _ in model.named_parameters())
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(image), model(image, *_words(1, 3, 384)))


def test_nmf_is_deterministic_under_its_seed_in_eval():
    x = torch.rand(2, 64, 8, 8)
    nmf = NMF2D(rank=16, eval_seed=3).eval()
    torch.testing.assert_close(nmf(x), nmf(x), rtol=0, atol=0)
    other_seed = NMF2D(rank=16, eval_seed=4).eval()
    assert not torch.allclose(nmf(x), other_seed(x))
    nmf.train()
    assert not torch.allclose(nmf(x), nmf(x))  # training draws fresh bases every forward


def test_nmf_runs_in_fp32_under_autocast():
    x = torch.rand(1, 32, 8, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = NMF2D(rank=8).eval()(x)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_nmf_reconstructs_a_low_rank_map():
    torch.manual_seed(0)
    x = (torch.rand(1, 32, 4) @ torch.rand(1, 4, 64)).reshape(1, 32, 8, 8)
    err = (NMF2D(rank=8, eval_steps=50).eval()(x) - x).norm() / x.norm()
    assert err < 0.1


def test_gradients_reach_every_trainable_parameter():
    torch.manual_seed(0)
    model = build_model(preset("lsms-tiny")).train()
    image = torch.randn(2, 3, 64, 64)
    words, mask = _words(2, 6, 384)
    target = torch.zeros(2, 1, 64, 64)
    target[:, :, 20:40, 16:36] = 1
    loss = LSMSLoss()(model.forward_features(image, words, mask), target)["total"]
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not dead, f"no gradient reaches {dead}"


# MODEL.md section 8 (480x480, C_l = 768, T = 20, BERT excluded): params M, GMACs
MODEL_MD_BUDGET = {
    ("lsms", True): (7.51, 10.60), ("lsms", False): (4.23, 9.74),
    ("lsms-budget", True): (8.10, 8.70), ("lsms-budget", False): (4.81, 7.84),
    ("lsms-table1", True): (23.73, 25.85), ("lsms-table1", False): (15.50, 22.73),
}


@pytest.mark.parametrize("name,text", list(MODEL_MD_BUDGET))
def test_presets_match_model_md_budget(name, text):
    result = count_model(preset(name, use_text=text, text_dim=768), image_size=480, tokens=20, preset=name)
    params, gmacs = MODEL_MD_BUDGET[(name, text)]
    assert abs(result.params_m - params) / params < 0.03
    assert abs(result.gmacs - gmacs) / gmacs < 0.05


@pytest.mark.parametrize("overrides", [
    {"conv_units": (7,)}, {"conv_units": (11, 21)}, {"pixel_map": False},
    {"fsd_stages": (1, 2, 3, 4)}, {"fsd_stages": (4,)}, {"fsd": False},
])
def test_ablation_switches_are_config_values(overrides):
    base = preset("lsms-tiny")
    config = dataclasses.replace(base, **overrides).validate()
    model, reference = build_model(config).eval(), build_model(base).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 64), *_words(1, 4, 384))
    assert logits.shape == (1, 1, 64, 64)
    assert sum(p.numel() for p in model.parameters()) != sum(p.numel() for p in reference.parameters())
    if "fsd" in overrides:
        assert isinstance(model.decode_head.hamburger, nn.Identity)
    if "pixel_map" in overrides:
        assert model.backbone.block1[0].attn.spatial_gating_unit.language.vis_value is None


def test_invalid_config_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="odd kernel"):
        ModelConfig(conv_units=(8,)).validate()
    with pytest.raises(ValueError, match="fsd_stages"):
        ModelConfig(fsd_stages=(5,)).validate()
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model(preset("lsms-tiny"))(torch.randn(1, 3, 70, 70), *_words(1, 3, 384))


def test_config_round_trips_through_json():
    config = LSMSConfig(model=preset("lsms-budget", conv_units=(7, 21), fsd_stages=(1, 2, 3, 4)), preset="x")
    assert LSMSConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="newer"):
        LSMSConfig.from_json('{"model": {"widths": [32, 64, 160, 256], "warp_drive": 1}}')


def test_model_with_text_refuses_missing_words():
    model = build_model(preset("lsms-tiny")).eval()
    with pytest.raises(ValueError, match="uses text"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 3, 64, 64), *_words(1, 3, 768))


def test_upsampled_logits_follow_decoder_logits():
    """The final logits are the decoder's, bilinearly upsampled to the input size."""
    torch.manual_seed(0)
    model = build_model(preset("lsms-tiny")).eval()
    image = torch.randn(1, 3, 64, 64)
    words, mask = _words(1, 3, 384)
    with torch.no_grad():
        stages = model.stage_features(image, words, mask)
        decoder_logits, _ = model.decode_head([stages[s - 1] for s in model.config.fsd_stages], (16, 16))
        expected = F.interpolate(decoder_logits, size=(64, 64), mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(image, words, mask), expected)


@pytest.mark.parametrize("name,stages", [("lsms", (2, 3, 4)), ("lsms-budget", (1, 2, 3, 4))])
def test_squeeze_before_resize_equals_the_papers_order(name, stages):
    """The decoder projects each stage before resizing it (cheaper); same logits as resize-concat-squeeze,
    including a stage that is downsampled (F1 into lsms-budget's S/8 decoder)."""
    config = preset(name, fsd_stages=stages)
    model = build_model(config).eval()
    image = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    words, mask = _words(1, 6, config.text_dim)
    with torch.no_grad():
        fast = model(image, words, mask)
        model.decode_head.literal_squeeze = True
        literal = model(image, words, mask)
    assert fast.std() > 0.01
    torch.testing.assert_close(fast, literal, atol=2e-4, rtol=1e-4)


def test_channels_last_gives_the_same_logits():
    """Inference runs NHWC (faster depthwise convolutions on the CPU); the NMF keeps the layout."""
    config = preset("lsms-tiny")
    model = build_model(config).eval()
    image = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    words, mask = _words(2, 5, config.text_dim)
    with torch.no_grad():
        reference = model(image, words, mask)
        model.to(memory_format=torch.channels_last)
        nhwc = model(image.contiguous(memory_format=torch.channels_last), words, mask)
        nmf = model.decode_head.hamburger.ham
        x = torch.rand(1, 16, 12, 10)
        nmf_nhwc = nmf(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(nhwc, reference, atol=2e-4, rtol=1e-4)
    assert nmf_nhwc.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nmf_nhwc, nmf(x), atol=1e-5, rtol=1e-4)


def test_position_encoding_starts_as_the_papers_model():
    """position_encoding is zero-initialised: with a paper model's weights the model computes the same
    logits, so it can start from any trained checkpoint (lsms-train --init-checkpoint)."""
    base = build_model(preset("lsms-tiny")).eval()
    grounded = build_model(preset("lsms-tiny", position_encoding=True)).eval()
    result = grounded.load_state_dict(base.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert sorted({k.split(".")[1] if k.startswith("backbone.") else k.split(".")[0] for k in result.missing_keys}) \
        == ["pos_embed1", "pos_embed2", "pos_embed3", "pos_embed4"]
    image, (words, mask) = torch.randn(2, 3, 64, 64), _words(2, 5, 384)
    with torch.no_grad():
        assert torch.allclose(grounded(image, words, mask), base(image, words, mask), atol=1e-6)
        grounded.backbone.pos_embed1.proj.weight.normal_()
        assert not torch.allclose(grounded(image, words, mask), base(image, words, mask), atol=1e-3)
