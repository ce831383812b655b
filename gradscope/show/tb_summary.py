"""What the TensorBoard mirror shows about a whole run: the gradient-flow image and the diagnosis panel.

Both are computed from plain numbers (numpy; Pillow for labels when importable), never torch, so they live on
the read side; ``measure.tb_writer.TensorBoardMirror`` imports this module lazily at ``close()`` and on
``Watch.report()``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from gradscope.errors import GradscopeWarning

if TYPE_CHECKING:
    from gradscope.show.report import Report

FLOW_MAX_COLUMNS = 600
"""The gradient-flow image averages recorded steps into at most 600 columns (one pixel or more each)."""


# viridis, sampled at 9 points (perceptually uniform, readable by colour-blind viewers and in greyscale)
_VIRIDIS = np.array([
    [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], dtype=float)
_MISSING = np.array([128, 128, 128], dtype=np.uint8)



def diagnose_logdir(logdir: str | os.PathLike[str]) -> Report | None:
    """The report of the one run in ``logdir`` (not its subfolders), or None (with a ``GradscopeWarning``)
    when it cannot be made. Problems with the log are part of the report, so they are not warned again."""
    from gradscope.judge.diagnose import diagnose
    from gradscope.show.report import Report
    from gradscope.store.load import load_run

    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            run = load_run(logdir, warn=True)
            return Report([diagnose(run)])
    except Exception as e:   # the mirror is a convenience: never fail the user's training because of it
        warnings.warn(f"gradscope: could not write the report to TensorBoard: {type(e).__name__}: {e}",
                      GradscopeWarning, stacklevel=3)
        return None


# ------------------------------------------------------------------------------------ gradient-flow image

def _colormap(v: np.ndarray) -> np.ndarray:
    """[0, 1] → viridis RGB uint8, NaN → grey."""
    pos = np.clip(np.nan_to_num(v, nan=0.0), 0.0, 1.0) * (len(_VIRIDIS) - 1)
    anchors = np.arange(len(_VIRIDIS))
    rgb = np.stack([np.interp(pos, anchors, _VIRIDIS[:, c]) for c in range(3)], axis=-1)
    out = np.rint(rgb).astype(np.uint8)
    out[~np.isfinite(v)] = _MISSING
    return out


def _bucket_columns(a: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(L, S) → (L, B≤width): NaN-aware mean over consecutive columns, and each bucket's first index."""
    s = a.shape[1]
    n = min(width, s)
    starts = (np.arange(n) * s) // n
    ok = np.isfinite(a)
    sums = np.add.reduceat(np.where(ok, a, 0.0), starts, axis=1)
    cnt = np.add.reduceat(ok.astype(np.int64), starts, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan), starts


def render_gradient_flow(grad_norms: np.ndarray, steps: Sequence[int], layer_names: Sequence[str], *,
                         width: int = FLOW_MAX_COLUMNS) -> np.ndarray:
    """Layers (rows, input at the top) × recorded steps (columns); colour = log10 of the gradient norm w.r.t.
    the layer output, viridis from the smallest (dark blue) to the largest (yellow) value of the run; grey
    where nothing was recorded. Rendered with numpy; labels (layer names, step range, colour scale) are
    drawn with Pillow's built-in bitmap font when Pillow is importable (TensorBoard depends on it).
    Returns an (H, W, 3) uint8 array."""
    g = np.asarray(grad_norms, dtype=float)
    n_layers = g.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(np.isfinite(g) & (g > 0), np.log10(np.where(g > 0, g, 1.0)), np.nan)
    cols, _ = _bucket_columns(logs, width)
    finite = cols[np.isfinite(cols)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    norm = (cols - lo) / (hi - lo) if hi - lo > 1e-12 else np.where(np.isfinite(cols), 0.5, np.nan)
    cells = _colormap(norm)                                             # (L, B, 3)
    row_h = int(np.clip(320 // max(n_layers, 1), 6, 28))
    col_w = max(1, width // max(cols.shape[1], 1))
    heat = np.repeat(np.repeat(cells, row_h, axis=0), col_w, axis=1)   # (L·row_h, B·col_w, 3)
    try:
        from PIL import Image, ImageDraw
    except ImportError:   # pragma: no cover - TensorBoard depends on Pillow
        bar = _colormap(np.linspace(0.0, 1.0, heat.shape[1]))[None].repeat(10, axis=0)
        return np.concatenate([heat, np.full((4, heat.shape[1], 3), 255, np.uint8), bar], axis=0)

    label_w = min(180, 8 + 6 * max((len(n) for n in layer_names), default=4))
    top, bottom, right = 18, 44, 12
    h_px, w_px = heat.shape[0], heat.shape[1]
    canvas = np.full((top + h_px + bottom, label_w + w_px + right, 3), 255, dtype=np.uint8)
    canvas[top:top + h_px, label_w:label_w + w_px] = heat
    bar_y = top + h_px + 16
    bar = _colormap(np.linspace(0.0, 1.0, w_px // 2))[None].repeat(8, axis=0)
    canvas[bar_y:bar_y + 8, label_w:label_w + bar.shape[1]] = bar
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    black = (0, 0, 0)
    draw.text((label_w, 3), "gradient flow: log10 ||dL/d output|| per layer (rows) x recorded step", fill=black)
    for i, name in enumerate(layer_names):
        text = name if len(name) * 6 <= label_w - 8 else "…" + name[-((label_w - 14) // 6):]
        y = top + i * row_h + max(0, (row_h - 10) // 2)
        draw.text((4, y), text, fill=black)
    if steps:
        draw.text((label_w, top + h_px + 2), f"step {steps[0]}", fill=black)
        last = f"step {steps[-1]}"
        draw.text((label_w + w_px - 6 * len(last), top + h_px + 2), last, fill=black)
    draw.text((label_w + bar.shape[1] + 6, bar_y - 2),
              f"1e{lo:.1f} … 1e{hi:.1f}" if finite.size else "no gradient recorded", fill=black)
    return np.asarray(img, dtype=np.uint8)
