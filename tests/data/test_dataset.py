"""DataConfig sides (auto/train/val/all), build_dataset on each format, collate into contract-1 batches."""
from __future__ import annotations

from pathlib import Path

import torch

from training.data import DataConfig, build_dataset, collate_batch
from training.data.synthetic import SYNTHETIC_CLASSES, SyntheticSpec


def test_deeppcb_group_holdout_sides(deeppcb_root: Path) -> None:
    cfg = DataConfig(format="deeppcb", root=deeppcb_root, val_groups=("group20085",), train_short_size=(64, 64), test_short_size=64)
    train, val = build_dataset(cfg, True), build_dataset(cfg, False)
    assert [r.image_id for r in train.reader.records] == ["00041000", "00041001"]
    assert [r.image_id for r in val.reader.records] == ["20085000"]
    assert train.normal_flags == [False, True]
    everything = build_dataset(cfg.model_copy(update={"split": "all"}), False)
    assert len(everything) == 3
    no_holdout = DataConfig(format="deeppcb", root=deeppcb_root)
    assert len(build_dataset(no_holdout, True)) == len(build_dataset(no_holdout, False)) == 3
    assert cfg.has_templates()


def test_synthetic_dataset_batches_match_contract() -> None:
    spec = SyntheticSpec(height=64, width=80, defect_size=(4, 14), normal_fraction=0.3)
    cfg = DataConfig(format="synthetic", synthetic=spec, synthetic_samples=6, synthetic_val_samples=3,
                     train_short_size=(64, 96), train_max_size=200, test_short_size=64)
    train, val = build_dataset(cfg, True), build_dataset(cfg, False)
    assert (len(train), len(val)) == (6, 3) and train.class_names == SYNTHETIC_CLASSES
    assert not torch.equal(train[0].template, val[0].template) or train[0].image_id != val[0].image_id
    images, templates, targets, sizes = collate_batch([train[i] for i in range(4)])
    assert images.dtype == torch.float32 and images.shape[0] == 4
    assert images.shape[2] % 32 == 0 and images.shape[3] % 32 == 0 and templates.shape == images.shape
    for t, (h, w) in zip(targets, sizes):
        assert set(t) == {"boxes", "labels", "is_normal"}
        assert t["boxes"].shape[1] == 4 and len(t["boxes"]) == len(t["labels"])
        if len(t["boxes"]):
            assert t["labels"].min() >= 1 and t["labels"].max() <= len(SYNTHETIC_CLASSES)
            assert float(t["boxes"][:, 2].max()) <= w and float(t["boxes"][:, 3].max()) <= h
        assert bool(t["is_normal"]) == (len(t["boxes"]) == 0)
    assert float(images.max()) <= 255.0 and float(images.min()) >= 0.0


def test_dataloader_with_collate_batch_and_a_worker() -> None:
    cfg = DataConfig(format="synthetic", synthetic=SyntheticSpec(height=64, width=64, defect_size=(4, 12)),
                     synthetic_samples=9, synthetic_val_samples=4, test_short_size=64)
    loader = torch.utils.data.DataLoader(build_dataset(cfg, False), batch_size=2, collate_fn=collate_batch, num_workers=1)
    batches = list(loader)  # batches cross a process boundary: Batch must survive pickling with its meta
    assert len(batches) == 2 and batches[0][0].shape == (2, 3, 64, 64)
    assert [m["image_id"] for m in batches[1].meta] == ["synthetic-1000003-000002", "synthetic-1000003-000003"]


def test_templates_as_normals_adds_defect_free_training_samples(deeppcb_root: Path) -> None:
    cfg = DataConfig(format="deeppcb", root=deeppcb_root, train_short_size=(64, 64), templates_as_normals=True)
    train = build_dataset(cfg, True)
    assert len(train) == 6 and train.normal_flags == [False, True, False, True, True, True]
    extra = train[3]
    assert extra.image_id == "00041000#template" and len(extra.boxes) == 0 and torch.equal(extra.image, extra.template)
    assert len(build_dataset(cfg, False)) == 3  # evaluation never sees the extra samples


def test_extra_datasets_join_the_training_set_with_classes_mapped_by_name(deeppcb_root: Path, tmp_path: Path) -> None:
    import pytest

    from training.data.synthetic import write_deeppcb_layout

    # deeppcb_root: DeepPCB's six classes; the extra names three of them in another order (a station's model)
    other = tmp_path / "station_export"
    write_deeppcb_layout(other, 2, SyntheticSpec(height=64, width=64, defect_size=(6, 16), normal_fraction=0.0))
    (other / "classes.txt").write_text("short\nopen\nspur\nmousebite\ncopper\n")  # labels 1..5 of the extra
    sizes = {"train_short_size": (64, 64), "test_short_size": 64}
    main = DataConfig(format="deeppcb", root=deeppcb_root, **sizes)
    extra = DataConfig(format="deeppcb", root=other)
    combined = build_dataset(main, True, extra=[extra])
    assert combined.class_names == ("open", "short", "mousebite", "spur", "copper", "pin-hole")
    assert len(combined) == 3 + 2 and combined.normal_flags[:3] == [False, True, False]
    alone = build_dataset(DataConfig(format="deeppcb", root=other, **sizes), True)
    to_main = {1: 2, 2: 1, 3: 4, 4: 3, 5: 5}  # short->2, open->1, spur->4, mousebite->3, copper->5
    for got, own in zip(combined.reader.records[3:], alone.reader.records):
        assert got.labels.tolist() == [to_main[v] for v in own.labels.tolist()] and len(got.labels)
        assert (got.boxes == own.boxes).all() and got.image_path == own.image_path
    assert combined[4].labels.tolist() == [to_main[v] for v in alone.reader.records[1].labels.tolist()]

    (other / "classes.txt").write_text("short\nopen\nspur\nmousebite\nscratch\n")
    with pytest.raises(ValueError, match=r"data.extra.0: classes \['scratch'\] are not among data.train's"):
        build_dataset(main, True, extra=[extra])
    with pytest.raises(ValueError, match="synthetic cannot be combined"):
        build_dataset(main, True, extra=[DataConfig(format="synthetic")])
