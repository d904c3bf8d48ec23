"""Template-to-frame registration before detection.

The paper (Sec. IV-E, Fig. 9) shows template reference degrading sharply with 5-10 px misalignment between the
image and its template; fixtures and conveyors drift by that much. We estimate the translation with OpenCV
phase correlation (or ECC for sub-pixel refinement) and warp the TEMPLATE onto the frame, so detected boxes stay
in frame pixels. The shift is recorded per frame: a drifting fixture shows up in the database before it shows
up as false alarms.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import cv2
import numpy as np


@dataclass(frozen=True)
class AlignResult:
    template: np.ndarray  # the template warped onto the frame (same shape as the frame)
    shift: tuple[float, float]  # (dx, dy): frame(x, y) ~= template(x - dx, y - dy)
    response: float  # phase-correlation peak (0..1) or ECC correlation; low means "did not lock"
    aligned: bool  # False when the estimate was rejected (too large) and the template used unshifted
    difference: np.ndarray | None = None  # |frame - aligned template|, grey float32 at 1/scale (drift measure)
    scale: int = 1  # the downscale factor of ``difference``


MIN_SIDE_FOR_DOWNSCALE = 256  # below this many px per side after downscaling, correlation loses the peak


def effective_downscale(shape: tuple[int, ...], downscale: int) -> int:
    """Downscale only as far as keeps >= MIN_SIDE_FOR_DOWNSCALE px per side (small frames: full resolution)."""
    return max(1, min(downscale, min(shape[0], shape[1]) // MIN_SIDE_FOR_DOWNSCALE))


def _gray(img: np.ndarray, downscale: int) -> np.ndarray:
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    if downscale > 1:
        gray = cv2.resize(gray, (gray.shape[1] // downscale, gray.shape[0] // downscale),
                          interpolation=cv2.INTER_AREA)
    return gray.astype(np.float32)


def _fit_size(template: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if template.shape[:2] == shape[:2]:
        return template
    return cv2.resize(template, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def _phase_shift(f: np.ndarray, t: np.ndarray) -> tuple[float, float, float]:
    window = cv2.createHanningWindow((f.shape[1], f.shape[0]), cv2.CV_32F)
    # phaseCorrelate applies the window to its inputs IN PLACE: give it copies, f and t are used again after
    (dx, dy), response = cv2.phaseCorrelate(t.copy(), f.copy(), window)
    return dx, dy, float(response)


def _ecc_shift(f: np.ndarray, t: np.ndarray, init: tuple[float, float], iterations: int) -> tuple[float, float, float]:
    warp = np.array([[1, 0, init[0]], [0, 1, init[1]]], dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, 1e-4)
    cc, warp = cv2.findTransformECC(t, f, warp, cv2.MOTION_TRANSLATION, criteria, None, 5)
    # With (templateImage=t, inputImage=f) ECC finds W such that f(W(x)) ~= t(x): the frame is the template
    # moved by +W, the same sign convention as phaseCorrelate(t, f).
    return float(warp[0, 2]), float(warp[1, 2]), float(cc)


def estimate_shift_phase(frame: np.ndarray, template: np.ndarray, downscale: int = 2) -> tuple[float, float, float]:
    """(dx, dy, response) by phase correlation on (optionally downscaled) grayscale with a Hann window."""
    downscale = effective_downscale(frame.shape, downscale)
    dx, dy, response = _phase_shift(_gray(frame, downscale), _gray(template, downscale))
    return dx * downscale, dy * downscale, response


def estimate_shift_ecc(frame: np.ndarray, template: np.ndarray, init: tuple[float, float] = (0.0, 0.0),
                       downscale: int = 2, iterations: int = 50) -> tuple[float, float, float]:
    """Translation by ECC maximisation (Evangelidis & Psarakis), refining ``init``; slower, robust to contrast."""
    downscale = effective_downscale(frame.shape, downscale)
    dx, dy, cc = _ecc_shift(_gray(frame, downscale), _gray(template, downscale),
                            (init[0] / downscale, init[1] / downscale), iterations)
    return dx * downscale, dy * downscale, cc


def warp_template(template: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Move the template by (dx, dy) so it overlays the frame, bilinear, borders replicated (no black edges
    that would look like a defect to a difference-based detector).

    Same result as ``cv2.warpAffine(..., INTER_LINEAR, BORDER_REPLICATE)`` for a pure translation, ~7x faster
    on 3-channel images: the integer part is a slice of a replicate-padded copy, the fractional part a 2x2
    bilinear kernel (``filter2D``). This runs once per frame, so it is on the daemon's critical path."""
    h, w = template.shape[:2]
    ix, iy = int(np.floor(dx)), int(np.floor(dy))
    fx, fy = dx - ix, dy - iy
    pad = max(abs(ix), abs(iy)) + 2
    padded = cv2.copyMakeBorder(template, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    # shifted(x, y) = template(x - ix, y - iy), with one extra row/column above/left for the kernel
    shifted = padded[pad - iy - 1: pad - iy + h, pad - ix - 1: pad - ix + w]
    if fx < 1e-6 and fy < 1e-6:
        return np.ascontiguousarray(shifted[1:, 1:])
    kernel = np.array([[fx * fy, (1 - fx) * fy, 0.0],
                       [fx * (1 - fy), (1 - fx) * (1 - fy), 0.0],
                       [0.0, 0.0, 0.0]], dtype=np.float32)  # anchor (1,1): taps at x-1/x and y-1/y
    return cv2.filter2D(shifted, -1, kernel, borderType=cv2.BORDER_REPLICATE)[1:, 1:]


def align_template(frame: np.ndarray, template: np.ndarray, method: Literal["phase", "ecc", "none"] = "phase",
                   max_shift: float = 32.0, downscale: int = 2) -> AlignResult:
    """Warp ``template`` onto ``frame``. Estimates beyond ``max_shift`` px are rejected (wrong template or a
    featureless image) and the template is used as is, flagged ``aligned=False``.

    The downscaled grey images the estimate works on are computed once and also give ``AlignResult.difference``
    (|frame - shifted template| at that scale), from which ``alignment_residual`` measures template drift."""
    template = _fit_size(template, frame.shape)
    ds = effective_downscale(frame.shape, downscale)
    f, t = _gray(frame, ds), _gray(template, ds)
    if method == "none":
        return AlignResult(template, (0.0, 0.0), 1.0, True, cv2.absdiff(f, t), ds)
    dx, dy, response = _phase_shift(f, t)
    if method == "ecc":
        try:
            dx, dy, response = _ecc_shift(f, t, (dx, dy), 50)
        except cv2.error:
            pass  # ECC did not converge: keep the phase-correlation estimate
    dx, dy = dx * ds, dy * ds
    if not (np.isfinite(dx) and np.isfinite(dy)) or max(abs(dx), abs(dy)) > max_shift:
        return AlignResult(template, (0.0, 0.0), response, False, cv2.absdiff(f, t), ds)
    if abs(dx) < 1e-3 and abs(dy) < 1e-3:
        return AlignResult(template, (0.0, 0.0), response, True, cv2.absdiff(f, t), ds)
    difference = cv2.absdiff(f, warp_template(t, dx / ds, dy / ds))
    return AlignResult(shifted_template(template, frame, (dx, dy)), (dx, dy), response, True, difference, ds)


def shifted_template(template: np.ndarray, frame: np.ndarray, shift: tuple[float, float] | None) -> np.ndarray:
    """The aligned template the detector saw for a frame with the recorded ``shift`` (``frames.shift_x/y``):
    the template moved by the shift, the band it moved away from taken from the frame. A training export
    rebuilds each frame's template with this, so it is exactly the reference the frame was inspected with."""
    template = _fit_size(template, frame.shape)
    if shift is None or (abs(shift[0]) < 1e-3 and abs(shift[1]) < 1e-3):
        return template
    return fill_uncovered(warp_template(template, shift[0], shift[1]), frame, shift[0], shift[1])


def fill_uncovered(warped: np.ndarray, frame: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Where the shifted template has no data (the band of width |shift| it moved away from), use the frame.

    Replicated template edges there differ from the frame (a PCB track replicated into a stripe), and a
    reference-based detector reads any image/template difference as a candidate defect: the demo showed rows of
    false alarms along the borders of shifted frames. Copying the frame makes the difference exactly zero where
    there is no reference, so nothing is detected from a region the template never saw."""
    h, w = warped.shape[:2]
    band_x, band_y = min(w, int(np.ceil(abs(dx)))), min(h, int(np.ceil(abs(dy))))
    if band_x == 0 and band_y == 0:
        return warped
    out = warped.copy() if not warped.flags.writeable else warped
    if band_x:
        cols = slice(0, band_x) if dx > 0 else slice(w - band_x, w)
        out[:, cols] = frame[:, cols]
    if band_y:
        rows = slice(0, band_y) if dy > 0 else slice(h - band_y, h)
        out[rows, :] = frame[rows, :]
    return out


def alignment_residual(result: AlignResult, boxes: Sequence[Sequence[float]] = (), box_margin: float = 2.0) -> float:
    """How well the aligned template still explains the frame: mean |frame - template| in grey levels (0..255)
    over the pixels the template covers, leaving out the detections (a real defect is not template drift).

    The band of width |shift| the template moved away from is left out (``fill_uncovered`` copies the frame
    there: zero difference by construction, which would pull the figure down). Uses ``result.difference`` at
    the alignment's downscale, so it costs one masked mean per frame. NaN when nothing is left to measure."""
    diff, ds = result.difference, result.scale
    if diff is None:
        return float("nan")
    h, w = diff.shape[:2]
    (sx, sy), mask = result.shift, np.zeros((h, w), np.uint8)
    bx, by = int(np.ceil(abs(sx) / ds)), int(np.ceil(abs(sy) / ds))
    mask[by if sy > 0 else 0: h if sy > 0 else h - by, bx if sx > 0 else 0: w if sx > 0 else w - bx] = 1
    for x1, y1, x2, y2 in boxes:
        c0, r0 = max(0, int((x1 - box_margin) // ds)), max(0, int((y1 - box_margin) // ds))
        c1, r1 = max(0, int(np.ceil((x2 + box_margin) / ds))), max(0, int(np.ceil((y2 + box_margin) / ds)))
        mask[r0:r1, c0:c1] = 0
    if not mask.any():
        return float("nan")
    return float(cv2.mean(diff, mask)[0])
