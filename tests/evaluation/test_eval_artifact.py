"""``rddn eval --artifact``: a compiled ONNX Runtime artifact evaluated through the daemon's backend agrees with
the checkpoint it was compiled from.

Tolerance (FP32 in both runtimes, only summation orders differ): on every image the top 20 checkpoint
detections (by score) each match an artifact detection of the same class with IoU >= 0.9, box corners within
2e-3 px of the 160 px frame and scores within 1e-5; every headline figure of the two reports agrees within 1e-4.
The frames are 160 px and the graph 128 px, so both resize paths (the dataset's test resize for the checkpoint,
the backend's stretch for the artifact) and both box mappings back to the frame are exercised.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from training.cli import main
from training.data import DataConfig
from training.engine.checkpoint import load_model_from_checkpoint, save_checkpoint
from training.engine.evaluate import collect_predictions
from training.engine.predictors import ARTIFACT_BACKENDS, ModelPredictor, artifact_predictor
from training.evaluation.metrics import box_iou
from training.model import build_model
from training.model.config import ModelConfig

CLASSES = ["spot", "scratch", "hole", "open", "short"]  # the synthetic surface's classes
FRAME, GRAPH = 160, 128
HEADLINE = ("map50", "coco_map", "deeppcb_map", "deeppcb_fscore")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(checkpoint, artifact dir, data config YAML) of one tiny TR-Pre + CR model with spread class scores."""
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("artifact_eval")
    torch.manual_seed(0)
    config = ModelConfig.model_validate({
        "class_names": CLASSES,
        "backbone": {"depth": 18, "width": 16, "norm": "gn", "frozen_stages": 0},
        "fpn": {"out_channels": 32},
        "rpn": {"anchor_sizes": [16, 32, 64, 128], "pre_nms_top_n_test": 300, "post_nms_top_n_test": 64},
        "roi_head": {"representation_size": 64},
        "reference": {"input": "tr_pre"},
        "context": {"enabled": True},
    })
    model = build_model(config).eval()
    with torch.no_grad():
        for stage in model.roi_heads.stages:
            stage.box_predictor.cls_score.weight.normal_(0.0, 0.3)
            stage.box_predictor.bbox_pred.weight.normal_(0.0, 0.02)
    checkpoint = save_checkpoint(root / "model.pt", model, epoch=1, iteration=10)
    artifact = root / "artifact"
    assert main(["compile", "--checkpoint", str(checkpoint), "--target", "onnxruntime", "--input-size", str(GRAPH),
                 str(GRAPH), "--no-verify", "--out", str(artifact)]) == 0
    data = {"format": "synthetic", "synthetic": {"height": FRAME, "width": FRAME, "positions": 2},
            "synthetic_val_samples": 4, "test_short_size": GRAPH, "test_max_size": GRAPH}
    data_yaml = root / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(data))
    return checkpoint, artifact, data_yaml


def _dataset(data_yaml: Path):
    from training.data import build_dataset

    return build_dataset(DataConfig.model_validate(yaml.safe_load(data_yaml.read_text())), train=False)


def test_artifact_detections_match_the_checkpoint(compiled) -> None:
    checkpoint, artifact, data_yaml = compiled
    dataset = _dataset(data_yaml)
    torch_side = ModelPredictor(load_model_from_checkpoint(checkpoint), dataset.transform)
    artifact_side = artifact_predictor(artifact, "onnxruntime", threads=1)
    try:
        preds_ckpt, gts_ckpt, _ = collect_predictions(torch_side, dataset)
        preds_art, gts_art, _ = collect_predictions(artifact_side, dataset)
    finally:
        artifact_side.close()
    assert len(preds_ckpt) == len(preds_art) == 4
    for g_c, g_a in zip(gts_ckpt, gts_art):
        np.testing.assert_array_equal(g_c["boxes"], g_a["boxes"])  # both in the 160 px frame
    for ckpt, art in zip(preds_ckpt, preds_art):
        assert len(ckpt["scores"]) >= 20  # parity on no detections would prove nothing
        top = np.argsort(-ckpt["scores"], kind="mergesort")[:20]
        ious = box_iou(ckpt["boxes"][top], art["boxes"])
        for row, index in enumerate(top):
            same_class = art["labels"] == ckpt["labels"][index]
            candidates = np.nonzero(same_class & (ious[row] >= 0.9))[0]
            assert len(candidates), f"detection {index} of the checkpoint has no artifact counterpart"
            best = candidates[np.argmin(np.abs(art["scores"][candidates] - ckpt["scores"][index]))]
            assert abs(float(art["scores"][best]) - float(ckpt["scores"][index])) <= 1e-5
            np.testing.assert_allclose(art["boxes"][best], ckpt["boxes"][index], atol=2e-3)
        assert float(ckpt["boxes"][:, 2:].max()) > GRAPH  # boxes really are in the 160 px frame


def test_rddn_eval_artifact_report_agrees_with_the_checkpoint_report(compiled, tmp_path: Path, capsys) -> None:
    checkpoint, artifact, data_yaml = compiled
    out_ckpt, out_art = tmp_path / "ckpt", tmp_path / "art"
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(data_yaml), "--out", str(out_ckpt),
                 "--threads", "1"]) == 0
    assert main(["eval", "--artifact", str(artifact), "--backend", "onnxruntime", "--data", str(data_yaml),
                 "--out", str(out_art), "--threads", "1"]) == 0
    assert "recall@1fpi=" in capsys.readouterr().out
    ckpt = json.loads((out_ckpt / "report.json").read_text())
    art = json.loads((out_art / "report.json").read_text())
    assert ckpt["num_pred"] > 0
    for key in HEADLINE:
        assert art[key] == pytest.approx(ckpt[key], abs=1e-4), key
    for budget in ("0.1", "1"):
        a, c = (r["defect_recall"]["at_false_calls_per_image"][budget] for r in (art, ckpt))
        assert a["recall"] == pytest.approx(c["recall"], abs=1e-4)
    metadata = json.loads((artifact / "metadata.json").read_text())
    assert art["backend"] == "onnxruntime" and art["model_sha256"] == metadata["model_sha256"]
    assert (art["score_thresh"], art["max_detections"]) == (metadata["score_thresh"], metadata["max_detections"])
    assert art["input_size"] == [GRAPH, GRAPH] and "checkpoint" not in art


def test_artifact_options_that_do_not_apply_are_refused(compiled, tmp_path: Path, capsys) -> None:
    _, artifact, data_yaml = compiled
    base = ["eval", "--artifact", str(artifact), "--data", str(data_yaml), "--out", str(tmp_path / "o")]
    assert main([*base, "--tr-post"]) == 2
    assert "--tr-post is for --checkpoint" in capsys.readouterr().err
    assert main([*base, "--backend", "nosuchruntime"]) == 2
    err = capsys.readouterr().err
    assert "nosuchruntime" in err and all(name in err for name in ARTIFACT_BACKENDS)
    assert main(["eval", "--artifact", str(tmp_path / "missing"), "--data", str(data_yaml),
                 "--out", str(tmp_path / "o")]) == 2
    assert "not a directory" in capsys.readouterr().err
