"""The benchmark scripts run, at toy sizes, and what they report is consistent.

No timing is asserted (these machines are noisy); the checks are that each script finishes,
writes every row it promises, and that its counts agree with lsms_core's own.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import data_scale, end_to_end, forward, gpu, training
from lsms_core.complexity import count_model
from lsms_core.config import preset


def _rows(path) -> list[dict]:
    return json.loads(path.read_text())["rows"]


def test_forward_reports_every_model_and_counts_macs_like_lsms_info(tmp_path):
    out = tmp_path / "forward.json"
    assert forward.main(["--sizes", "64", "--runs", "1", "--json", str(out)]) == 0
    rows = {r["model"]: r for r in _rows(out)}
    assert set(rows) == {"lsms", "lsms + text encoding", "lsms compiled (ONNX Runtime)", "lsms before speed work",
                         "lsms text-free", "lsms-budget", "U-Net (MONAI BasicUNet)", "CLIPSeg", "SegFormer-B0",
                         "matmul 2048x2048 fp32"}
    assert rows["lsms compiled (ONNX Runtime)"]["gmacs"] == rows["lsms"]["gmacs"]  # the same function
    assert all(r["ms"] > 0 and r["gmacs"] > 0 for r in rows.values())
    expected = count_model(preset("lsms", text_dim=384), image_size=64, tokens=forward.TOKENS)
    assert rows["lsms"]["gmacs"] == pytest.approx(expected.gmacs_executed, rel=1e-6)
    assert rows["lsms before speed work"]["gmacs"] == pytest.approx(expected.gmacs, rel=1e-6)
    assert rows["lsms"]["params_m"] == pytest.approx(expected.params_m, rel=1e-6)
    assert rows["U-Net (MONAI BasicUNet)"]["params_m"] == pytest.approx(14.99, abs=0.01)  # Table II: 14.8 M
    assert rows["lsms"]["vs_lsms"] == 1.0


def test_data_scale_opens_validates_and_appends(tmp_path):
    out = tmp_path / "data.json"
    assert data_scale.main(["--lines", "40", "--json", str(out)]) == 0
    [row] = _rows(out)
    assert row["lines"] == 40 and row["validate_errors"] == 0
    assert row["open_s"] > 0 and row["append_s"] > 0 and row["open_and_append_s"] > 0


def test_training_benchmark_runs_a_child_per_configuration(tmp_path):
    out = tmp_path / "training.json"
    assert training.main(["--sizes", "64", "--batches", "1", "2", "--steps", "1", "--warmup", "0",
                          "--layouts", "NHWC", "--optimisers", "fused", "--json", str(out)]) == 0
    rows = _rows(out)
    assert [(r["size"], r["batch"], r["layout"], r["optimiser"]) for r in rows] == [(64, 1, "NHWC", "fused"),
                                                                                   (64, 2, "NHWC", "fused")]
    assert all(r["samples_per_s"] > 0 and r["peak_rss_mb"] > 100 for r in rows)


def test_training_benchmark_compares_the_optimisers_in_one_process(tmp_path):
    out = tmp_path / "optimiser.json"
    assert training.main(["--optimiser-ab", "--sizes", "64", "--batches", "1", "--json", str(out)]) == 0
    rows = _rows(out)
    assert [r["optimiser"] for r in rows] == ["foreach", "fused"]
    assert all(r["optimiser_ms"] > 0 and r["s_per_step"] * 1000 > r["optimiser_ms"] for r in rows)


def test_gpu_benchmark_says_when_there_is_no_gpu_and_runs_its_code_on_the_cpu(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    assert gpu.main(["--json", str(out)]) == 0
    assert json.loads(out.read_text())["measured"] is False
    monkeypatch.undo()
    assert gpu.main(["--device", "cpu", "--size", "64", "--rounds", "1", "--train-batch", "2", "--train-steps", "1",
                     "--json", str(out)]) == 0
    rows = _rows(out)
    assert len(rows) == 10 and all(r["images_per_s"] > 0 for r in rows)


def test_end_to_end_without_gui(tmp_path):
    out = tmp_path / "e2e.json"
    assert end_to_end.main(["--runs", "1", "--cold-runs", "1", "--no-gui", "--json", str(out)]) == 0
    rows = _rows(out)
    assert rows[0]["what"].startswith("lsms-segment, cold") and rows[0]["peak_rss_mb"] > 100
    assert sum("API 480x480" in r["what"] for r in rows) == 2
    assert any(r["what"].startswith("model forward alone, 480x480") for r in rows)
    assert all(r["ms"] > 0 for r in rows)


def test_referring_benchmark_reports_both_text_modes(tmp_path, tiny_checkpoint, mini_dataset):
    from benchmarks import referring

    out = tmp_path / "referring.json"
    assert referring.main([str(mini_dataset), "--checkpoint", str(tiny_checkpoint), "--split", "val",
                           "--json", str(out)]) == 0
    rows = _rows(out)
    assert [r["text"] for r in rows] == ["as-is", "neutral"]
    assert all(0 <= r["dice"] <= 1 and r["n"] == 6 for r in rows)
    assert all(r["n_referring"] == 0 or 0 <= r["hit_rate"] <= 1 for r in rows)


def test_fine_tune_curve_fine_tunes_the_default_model_and_scores_the_same_neighbours(tmp_path, mini_dataset, capsys):
    """At toy size (1 corrected slice, 1 epoch, 64 px): the N = 0 row is the default model itself, the
    N = 1 row a fine-tuned model, both scored on the same neighbour slices."""
    from benchmarks import fine_tune_curve

    assert fine_tune_curve.main([str(mini_dataset), "--sizes", "1", "--epochs", "1", "--image-size", "64"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    zero, one = report["rows"]
    assert (zero["n"], zero["train_annotations"], one["n"], one["train_annotations"]) == (0, 0, 1, 1)
    assert zero["n_eval"] == one["n_eval"] > 0 and report["neighbour_slices"] >= 1
    assert one["train_seconds"] > 0 and zero["train_seconds"] < one["train_seconds"]


def test_prompt_clicks_clicks_on_a_shown_canvas_and_reports_both_images(tmp_path):
    """The click-prompt benchmark in a real, shown napari window: both images, every figure measured."""
    from benchmarks import prompt_clicks

    out = tmp_path / "clicks.json"
    assert prompt_clicks.main(["--clicks", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [row["image"] for row in rows] == ["RefLiTS sample 128x128", "693_UNCI.dcm 512x512 CT"]
    for row in rows:
        assert row["clicks"] == 2 and 0 < row["model_thread_ms_median"] <= row["click_to_mask_ms_median"]
        assert row["mode_on_to_ready_ms"] > 0 and row["first_click_ms"] > 0


def test_startup_compares_the_quick_start_with_pytorch_in_fresh_processes(tmp_path):
    from benchmarks import startup

    out = tmp_path / "startup.json"
    assert startup.main(["--runs", "1", "--no-gui", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert [row["configuration"] for row in figures["rows"]] == ["quick", "pytorch", "transformers"]
    assert all(row["cold_lsms_segment_s"] > 0 for row in figures["rows"]) and figures["build_s"] > 0
