"""Synthetic reference-inspection data: textured surfaces, a template per position, defects with exact boxes.

Why: the real sets are small or not redistributable, and the daemon demo needs frames on a machine with no
dataset. Torch-free (numpy + cv2) so the daemon can import it.

Model of a production line: a station sees a fixed set of ``positions`` (board locations / fabric repeats /
profile segments). Each position has one defect-free design rendered deterministically from
``(spec.seed, position)``; its centre crop is the position's template. A frame is the same design cropped with a
small random offset (``max_shift`` px, the registration error), optionally damaged by defects, then lit with a
random gain/gradient and sensor noise. Defects are painted on the aligned crop *before* lighting, and each box
is the tight bounding box (pixel corners) of exactly the pixels its defect changed, so with ``max_shift=0`` and no
lighting noise ``|image - template|`` is non-zero exactly inside the boxes. Defects never overlap (with a 2 px
gap), so a later defect cannot change an earlier box.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable, Literal, Sequence

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from training.data.sample import Sample

#: Defect classes, label = index + 1.
SYNTHETIC_CLASSES: tuple[str, ...] = ("spot", "scratch", "hole", "open", "short")
SURFACES: tuple[str, ...] = ("pcb", "fabric", "metal")
_GAP = 2  # px between defect boxes
_MIN_SIDE = 3  # a defect whose changed pixels span less than this is redrawn (too thin to label reliably)
_RETRIES = 30

RngLike = int | Sequence[int] | np.random.Generator | None


class SyntheticSpec(BaseModel):
    """Everything that shapes the synthetic data; frozen and hashable so position designs can be cached."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    height: int = Field(256, ge=32, le=4096)
    width: int = Field(256, ge=32, le=4096)
    surface: Literal["pcb", "fabric", "metal"] = "pcb"
    positions: int = Field(8, ge=1)  # distinct designs (templates) on the line
    seed: int = 0  # seeds the designs; frames get their own rng
    max_shift: int = Field(0, ge=0, le=32)  # template/image misregistration, |dx|, |dy| <= max_shift
    noise_std: float = Field(2.0, ge=0.0)  # sensor noise (grey levels)
    gain_jitter: float = Field(0.05, ge=0.0, lt=0.5)  # lighting: gain in 1 +- j, plus a gradient of +- j
    defects_per_image: tuple[int, int] = (1, 3)  # inclusive range for defective frames
    defect_size: tuple[int, int] = (8, 32)  # typical defect extent in px, inclusive range
    normal_fraction: float = Field(0.2, ge=0.0, le=1.0)  # share of generated frames without defects

    @model_validator(mode="after")
    def _ranges(self) -> "SyntheticSpec":
        lo, hi = self.defects_per_image
        if not 1 <= lo <= hi:
            raise ValueError(f"synthetic.defects_per_image must be 1 <= lo <= hi, got {self.defects_per_image}")
        lo, hi = self.defect_size
        if not 3 <= lo <= hi or hi > min(self.height, self.width) // 2:
            raise ValueError(
                f"synthetic.defect_size must be 3 <= lo <= hi <= min(height, width) / 2, got {self.defect_size}"
            )
        return self


def _rng(rng_or_seed: RngLike) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


# ---------------------------------------------------------------------------------------------------------
# Surfaces: each returns (canvas uint8 [h, w, 3], foreground mask bool [h, w] or None, palette (bg, fg)).
# ---------------------------------------------------------------------------------------------------------
Palette = tuple[np.ndarray, np.ndarray]


def _pcb_surface(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None, Palette]:
    """Green substrate with copper tracks and pads (flat colours, like a binarised AOI scan in colour)."""
    substrate = np.array([22, 92, 44], np.float32) + rng.integers(-8, 9, 3)
    copper = np.array([205, 165, 70], np.float32) + rng.integers(-15, 16, 3)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(max(6, (h * w) // 5000)):
        width = int(rng.integers(3, 9))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        points = [(x, y)]
        for _seg in range(int(rng.integers(1, 4))):  # Manhattan routing, like real tracks
            if rng.random() < 0.5:
                x = int(np.clip(x + rng.integers(-w // 2, w // 2 + 1), 0, w - 1))
            else:
                y = int(np.clip(y + rng.integers(-h // 2, h // 2 + 1), 0, h - 1))
            points.append((x, y))
        for p, q in zip(points, points[1:]):
            cv2.line(mask, p, q, 1, width)
        for p in (points[0], points[-1]):
            cv2.circle(mask, p, width + int(rng.integers(1, 4)), 1, -1)
    fg = mask.astype(bool)
    canvas = np.where(fg[..., None], copper, substrate)
    return np.clip(canvas, 0, 255).astype(np.uint8), fg, (substrate, copper)


def _low_freq(rng: np.random.Generator, h: int, w: int, cells: int = 6) -> np.ndarray:
    grid = rng.normal(0.0, 1.0, (cells, cells)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _fabric_surface(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None, Palette]:
    """Twill-like weave: alternating warp/weft yarn cells with sinusoidal yarn profiles and dye variation."""
    period = int(rng.integers(4, 9))
    base = rng.uniform(60, 200, 3).astype(np.float32)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    warp = np.sin(np.pi * (x % period) / period)
    weft = np.sin(np.pi * (y % period) / period)
    over = ((x // period + y // period) % 2).astype(bool)
    weave = np.where(over, warp, weft)
    shade = 0.75 + 0.3 * weave + 0.04 * _low_freq(rng, h, w)
    canvas = base[None, None, :] * shade[..., None]
    bg = base * 0.35  # missing yarn shows the dark backing
    fg = np.clip(255 - base, 40, 255)  # a foreign yarn of contrasting colour
    return np.clip(canvas, 0, 255).astype(np.uint8), None, (bg, fg)


def _metal_surface(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None, Palette]:
    """Brushed aluminium: noise smeared along the brushing direction over a slightly bluish grey."""
    base = float(rng.uniform(140, 190))
    tint = np.array([0.97, 1.0, 1.04], np.float32)
    streaks = cv2.blur(rng.normal(0.0, 1.0, (h, w)).astype(np.float32), (41, 1)) * 60.0
    shade = base + streaks + 6.0 * _low_freq(rng, h, w)
    canvas = shade[..., None] * tint[None, None, :]
    return np.clip(canvas, 0, 255).astype(np.uint8), None, (np.full(3, 70.0, np.float32), np.full(3, 240.0, np.float32))


_SURFACES: dict[str, Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray | None, Palette]]] = {
    "pcb": _pcb_surface,
    "fabric": _fabric_surface,
    "metal": _metal_surface,
}


@lru_cache(maxsize=128)
def _position_canvas(spec: SyntheticSpec, position: int) -> tuple[np.ndarray, np.ndarray | None, Palette]:
    """The design of one position, ``max_shift`` px larger on every side than a frame."""
    if not 0 <= position < spec.positions:
        raise ValueError(f"position {position} out of range: spec has {spec.positions} positions")
    m = spec.max_shift
    rng = np.random.default_rng([spec.seed, position, SURFACES.index(spec.surface)])
    canvas, fg, palette = _SURFACES[spec.surface](rng, spec.height + 2 * m, spec.width + 2 * m)
    canvas.setflags(write=False)
    if fg is not None:
        fg.setflags(write=False)
    return canvas, fg, palette


def make_position_template(spec: SyntheticSpec, position: int) -> np.ndarray:
    """The defect-free, well-aligned template of ``position``: uint8 RGB [height, width, 3]."""
    canvas, _, _ = _position_canvas(spec, position)
    m = spec.max_shift
    return canvas[m : m + spec.height, m : m + spec.width].copy()


# ---------------------------------------------------------------------------------------------------------
# Defects: paint on ``img`` in place. The changed pixels are measured afterwards, never assumed.
# ---------------------------------------------------------------------------------------------------------
def _point(rng: np.random.Generator, img: np.ndarray, fg: np.ndarray | None, on_fg: bool) -> tuple[int, int]:
    h, w = img.shape[:2]
    if on_fg and fg is not None and fg.any():
        ys, xs = np.nonzero(fg)
        i = int(rng.integers(len(xs)))
        return int(xs[i]), int(ys[i])
    return int(rng.integers(0, w)), int(rng.integers(0, h))


def _spot(rng, img, fg, palette, size) -> None:
    """A stain: a darkened (or bleached) ellipse."""
    cx, cy = _point(rng, img, fg, on_fg=False)
    mask = np.zeros(img.shape[:2], np.uint8)
    axes = (max(2, size // 2), max(2, int(size * rng.uniform(0.3, 0.5))))
    cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    region = mask.astype(bool)
    factor = 0.45 if rng.random() < 0.7 else 1.6
    img[region] = np.clip(img[region].astype(np.float32) * factor + (0 if factor < 1 else 20), 0, 255).astype(np.uint8)


def _scratch(rng, img, fg, palette, size) -> None:
    """A thin bright line at a random angle."""
    cx, cy = _point(rng, img, fg, on_fg=False)
    angle = rng.uniform(0, np.pi)
    length = size * rng.uniform(1.0, 2.0)
    dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
    cv2.line(img, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), (235, 235, 230), int(rng.integers(1, 3)))


def _hole(rng, img, fg, palette, size) -> None:
    """A pin-hole: a small near-black disc (on the foreground where there is one)."""
    cx, cy = _point(rng, img, fg, on_fg=True)
    cv2.circle(img, (cx, cy), max(2, int(size * rng.uniform(0.2, 0.4))), (12, 12, 12), -1)


def _open(rng, img, fg, palette, size) -> None:
    """Missing material: on a PCB a cut through a track; elsewhere a band of missing yarn/coating."""
    cx, cy = _point(rng, img, fg, on_fg=True)
    half = max(2, size // 2)
    bg = tuple(float(v) for v in palette[0])
    if fg is not None:
        cut = np.zeros(img.shape[:2], np.uint8)
        hx, hy = (half // 2, half) if rng.random() < 0.5 else (half, half // 2)  # cut across or along
        cv2.rectangle(cut, (cx - hx, cy - hy), (cx + hx, cy + hy), 1, -1)
        region = cut.astype(bool) & fg
        img[region] = np.asarray(bg, np.float32).astype(np.uint8)
    else:
        if rng.random() < 0.5:
            cv2.rectangle(img, (cx - half, cy - 1), (cx + half, cy + 1), bg, -1)
        else:
            cv2.rectangle(img, (cx - 1, cy - half), (cx + 1, cy + half), bg, -1)


def _short(rng, img, fg, palette, size) -> None:
    """Extra material: on a PCB a copper bridge; elsewhere a foreign bright yarn/deposit segment."""
    cx, cy = _point(rng, img, fg, on_fg=fg is not None)
    length = size * rng.uniform(0.8, 1.5)
    if rng.random() < 0.5:
        p, q = (cx, cy), (int(cx + length), cy)
    else:
        p, q = (cx, cy), (cx, int(cy + length))
    cv2.line(img, p, q, tuple(float(v) for v in palette[1]), int(rng.integers(2, 5)))


_DEFECTS = {"spot": _spot, "scratch": _scratch, "hole": _hole, "open": _open, "short": _short}


def _changed_box(before: np.ndarray, after: np.ndarray) -> np.ndarray | None:
    """Tight box (pixel corners) of every pixel whose value changed in any channel, or None."""
    h, w = before.shape[:2]
    diff = cv2.absdiff(before, after).reshape(h, w * 3)  # channels side by side: column c -> pixel c // 3
    x, y, bw, bh = cv2.boundingRect(diff)  # bbox of the non-zero entries (OpenCV, ~20x faster than numpy)
    if bw == 0 or bh == 0:
        return None
    return np.array([x // 3, y, (x + bw - 1) // 3 + 1, y + bh], np.float32)


def _overlaps(box: np.ndarray, boxes: list[np.ndarray]) -> bool:
    for other in boxes:
        if (box[0] < other[2] + _GAP and other[0] < box[2] + _GAP and box[1] < other[3] + _GAP and other[1] < box[3] + _GAP):
            return True
    return False


def _add_defects(
    spec: SyntheticSpec, rng: np.random.Generator, img: np.ndarray, fg: np.ndarray | None, palette: Palette
) -> tuple[np.ndarray, np.ndarray]:
    count = int(rng.integers(spec.defects_per_image[0], spec.defects_per_image[1] + 1))
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    for _ in range(count):
        label = int(rng.integers(1, len(SYNTHETIC_CLASSES) + 1))
        paint = _DEFECTS[SYNTHETIC_CLASSES[label - 1]]
        for _try in range(_RETRIES):
            before = img.copy()
            paint(rng, img, fg, palette, int(rng.integers(spec.defect_size[0], spec.defect_size[1] + 1)))
            box = _changed_box(before, img)
            ok = (
                box is not None
                and box[2] - box[0] >= _MIN_SIDE
                and box[3] - box[1] >= _MIN_SIDE
                and not _overlaps(box, boxes)
            )
            if ok:
                boxes.append(box)
                labels.append(label)
                break
            img[...] = before  # undo and try elsewhere
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


def _light(spec: SyntheticSpec, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Lighting change + sensor noise: what makes a real frame differ from its template outside defects."""
    if spec.gain_jitter == 0.0 and spec.noise_std == 0.0:
        return img
    h, w = img.shape[:2]
    j = spec.gain_jitter
    gain0, gx, gy = 1.0 + rng.uniform(-j, j), rng.uniform(-j, j), rng.uniform(-j, j)
    col = (gx * (np.arange(w, dtype=np.float32) / w - 0.5))[None, :]
    row = (gain0 + gy * (np.arange(h, dtype=np.float32) / h - 0.5))[:, None]
    out = img.astype(np.float32) * (row + col)[..., None]
    if spec.noise_std > 0:
        out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(spec.noise_std)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def generate_frame(
    spec: SyntheticSpec, position: int, rng: RngLike = None, defective: bool | None = None, image_id: str = ""
) -> Sample:
    """A frame of ``position`` (aligned to :func:`make_position_template` up to ``max_shift``).

    ``defective=None`` draws it: defect-free with probability ``spec.normal_fraction``. The returned Sample
    carries the template, exact boxes (in frame pixels) and labels into :data:`SYNTHETIC_CLASSES`.
    """
    gen = _rng(rng)
    canvas, fg_full, palette = _position_canvas(spec, position)
    if defective is None:
        defective = bool(gen.random() >= spec.normal_fraction)
    m = spec.max_shift
    dx, dy = (int(v) for v in gen.integers(-m, m + 1, 2)) if m else (0, 0)
    window = (slice(m + dy, m + dy + spec.height), slice(m + dx, m + dx + spec.width))
    img = canvas[window].copy()
    fg = fg_full[window] if fg_full is not None else None
    boxes, labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    if defective:
        boxes, labels = _add_defects(spec, gen, img, fg, palette)
    img = _light(spec, gen, img)
    return Sample(
        image=img,
        template=make_position_template(spec, position),
        boxes=boxes,
        labels=labels,
        is_normal=len(boxes) == 0,
        image_id=image_id or f"{spec.surface}-pos{position:03d}",
        path="",
    )


def generate_sample(spec: SyntheticSpec, rng_or_seed: RngLike = None, position: int | None = None) -> Sample:
    """One random training sample: a random (or given) position, defective or normal per the spec."""
    gen = _rng(rng_or_seed)
    if position is None:
        position = int(gen.integers(spec.positions))
    tag = "-".join(str(v) for v in np.atleast_1d(rng_or_seed)) if isinstance(rng_or_seed, (int, tuple, list)) else ""
    return generate_frame(spec, position, gen, image_id=f"{spec.surface}-pos{position:03d}" + (f"-s{tag}" if tag else ""))


class SyntheticDataset(Sequence[Sample]):
    """A reader (contract 3) over ``num_samples`` generated samples; sample ``i`` is seeded by (seed, i)."""

    def __init__(self, spec: SyntheticSpec, num_samples: int, seed: int = 0) -> None:
        if num_samples < 1:
            raise ValueError(f"synthetic num_samples must be >= 1, got {num_samples}")
        self.spec = spec
        self.num_samples = num_samples
        self.seed = seed
        self.class_names: tuple[str, ...] = SYNTHETIC_CLASSES
        self.has_templates = True

    def __len__(self) -> int:
        return self.num_samples

    def is_normal(self, index: int) -> bool:
        """Whether sample ``index`` is defect-free, without rendering it (replays generate_sample's first draws)."""
        gen = np.random.default_rng((self.seed, index))
        gen.integers(self.spec.positions)
        return bool(gen.random() < self.spec.normal_fraction)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"synthetic index {index} out of range (len {self.num_samples})")
        index %= self.num_samples
        sample = generate_sample(self.spec, (self.seed, index))
        sample.image_id = f"synthetic-{self.seed}-{index:06d}"
        return sample


def write_deeppcb_layout(
    root: Path | str,
    n: int,
    spec: SyntheticSpec,
    seed: int = 0,
    group_size: int = 100,
    list_name: str = "trainval.txt",
) -> Path:
    """Write ``n`` generated pairs as a DeepPCB-format dataset (readable by ``DeepPCBReader``); returns the list.

    Groups of ``group_size`` pairs become ``groupGGGGG`` folders (so ``split_by_group`` works), boxes are
    written as ``x1 y1 x2 y2 label`` and ``classes.txt`` names :data:`SYNTHETIC_CLASSES`. Images are JPEG
    (quality 95) because the DeepPCB layout names them ``.jpg``; boxes stay exact, pixels lose a little.
    """
    if not 1 <= group_size <= 1000:
        raise ValueError(f"group_size must be in 1..1000 (3-digit ids inside a group), got {group_size}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(SYNTHETIC_CLASSES) + "\n")
    lines = []
    for i in range(n):
        sample = generate_sample(spec, (seed, i))
        group = f"{i // group_size + 1:05d}"
        stem = f"{group}{i % group_size:03d}"
        img_dir, ann_dir = root / f"group{group}" / group, root / f"group{group}" / f"{group}_not"
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        # 4:4:4 (no chroma subsampling): colour edges of tracks/defects survive the JPEG
        params = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
        cv2.imwrite(str(img_dir / f"{stem}_test.jpg"), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR), params)
        cv2.imwrite(str(img_dir / f"{stem}_temp.jpg"), cv2.cvtColor(sample.template, cv2.COLOR_RGB2BGR), params)
        rows = [f"{int(b[0])} {int(b[1])} {int(b[2])} {int(b[3])} {int(lab)}" for b, lab in zip(sample.boxes, sample.labels)]
        (ann_dir / f"{stem}.txt").write_text("".join(r + "\n" for r in rows))
        lines.append(f"group{group}/{group}/{stem}.jpg group{group}/{group}_not/{stem}.txt")
    list_path = root / list_name
    list_path.write_text("\n".join(lines))  # no final newline, like the published trainval.txt
    return list_path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.data.synthetic OUT --n 200``: write a synthetic DeepPCB-format dataset."""
    import argparse

    parser = argparse.ArgumentParser(description="Write a synthetic DeepPCB-format dataset (template + tested pairs).")
    parser.add_argument("out", type=Path, help="dataset root to create")
    parser.add_argument("--n", type=int, default=200, help="number of pairs")
    parser.add_argument("--surface", choices=SURFACES, default="pcb")
    parser.add_argument("--size", type=int, default=256, help="frame height and width in px")
    parser.add_argument("--positions", type=int, default=8)
    parser.add_argument("--max-shift", type=int, default=0, help="template/image misregistration in px")
    parser.add_argument("--normal-fraction", type=float, default=0.2)
    parser.add_argument("--group-size", type=int, default=100, help="pairs per groupNNNNN folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    spec = SyntheticSpec(
        height=args.size, width=args.size, surface=args.surface, positions=args.positions, seed=args.seed,
        max_shift=args.max_shift, normal_fraction=args.normal_fraction,
        defect_size=(min(8, args.size // 4), min(32, args.size // 4)),
    )
    list_path = write_deeppcb_layout(args.out, args.n, spec, seed=args.seed, group_size=args.group_size)
    print(f"wrote {args.n} pairs to {args.out} (list {list_path.name}, classes {', '.join(SYNTHETIC_CLASSES)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
