"""How well are DeepPCB's template/test pairs registered? Evidence for the TR-Pre vs TR-Inter gap.

For every pair of the list: the residual shift between tested image and template (phase correlation with
sub-pixel peak, OpenCV), and the share of pixels that differ (|I - T| > 127 on the binarised images) outside the
annotated defect boxes, before and after correcting that shift. Pixels that differ outside any defect are what
TR-Pre's input (I - T) / (2 std) shows the network besides the defects; a feature difference C_i(I) - C_i(T)
smooths a one-pixel edge misregistration over its receptive field.

    .venv/bin/python benchmarks/deeppcb_registration.py [--root ../shared/datasets/deeppcb] [--groups 92000 44000]
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from training.data.deeppcb import group_of, read_list_file


def load_pair(root: Path, line: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image_rel, ann_rel = line.split()
    stem = image_rel[: -len(".jpg")]
    test = cv2.imread(str(root / f"{stem}_test.jpg"), cv2.IMREAD_GRAYSCALE)
    temp = cv2.imread(str(root / f"{stem}_temp.jpg"), cv2.IMREAD_GRAYSCALE)
    rows = [r.replace(",", " ").split() for r in (root / ann_rel).read_text().splitlines() if r.strip()]
    boxes = np.array([[int(v) for v in r[:4]] for r in rows], np.int64).reshape(-1, 4)
    return test, temp, boxes


def outside_boxes_mask(shape: tuple[int, int], boxes: np.ndarray, margin: int = 4) -> np.ndarray:
    mask = np.ones(shape, bool)
    for x1, y1, x2, y2 in boxes:
        mask[max(0, y1 - margin) : y2 + margin, max(0, x1 - margin) : x2 + margin] = False
    return mask


def differing(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(((np.abs(a.astype(np.int16) - b.astype(np.int16)) > 127) & mask).sum() / max(mask.sum(), 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "deeppcb")
    parser.add_argument("--groups", nargs="*", default=None, help="only these board groups (default: all)")
    args = parser.parse_args()
    lines = read_list_file(args.root / "trainval.txt")
    if args.groups:
        wanted = {g if g.startswith("group") else f"group{int(g):05d}" for g in args.groups}
        lines = [ln for ln in lines if group_of(ln) in wanted]
    per_group: dict[str, list[tuple[float, ...]]] = defaultdict(list)
    for line in lines:
        test, temp, boxes = load_pair(args.root, line)
        (dx, dy), _ = cv2.phaseCorrelate(temp.astype(np.float32), test.astype(np.float32))
        mask = outside_boxes_mask(test.shape, boxes)
        before = differing(test, temp, mask)
        diff = np.abs(test.astype(np.int16) - temp.astype(np.int16)) > 127
        inside_share = float((diff & ~mask).sum() / max(diff.sum(), 1))
        shifted = cv2.warpAffine(temp, np.float32([[1, 0, dx], [0, 1, dy]]), (temp.shape[1], temp.shape[0]),
                                 flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        after = differing(test, shifted, mask)
        per_group[group_of(line)].append((dx, dy, before, after, inside_share))
    print("| group | pairs | median abs shift x / y (px) | pairs with shift >= 0.5 px | share of pixels differing outside defects: as given / after shift correction | share of differing pixels that lie on a defect |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    everything = []
    for group in sorted(per_group):
        v = np.array(per_group[group])
        everything.append(v)
        big = (np.hypot(v[:, 0], v[:, 1]) >= 0.5).mean()
        print(f"| {group} | {len(v)} | {np.median(np.abs(v[:, 0])):.2f} / {np.median(np.abs(v[:, 1])):.2f} | "
              f"{100 * big:.0f} % | {100 * v[:, 2].mean():.2f} % / {100 * v[:, 3].mean():.2f} % | {100 * v[:, 4].mean():.0f} % |")
    v = np.concatenate(everything)
    big = (np.hypot(v[:, 0], v[:, 1]) >= 0.5).mean()
    print(f"| all | {len(v)} | {np.median(np.abs(v[:, 0])):.2f} / {np.median(np.abs(v[:, 1])):.2f} | {100 * big:.0f} % | "
          f"{100 * v[:, 2].mean():.2f} % / {100 * v[:, 3].mean():.2f} % | {100 * v[:, 4].mean():.0f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
