"""The pictures of an evaluation report, drawn with PIL: a confusion matrix and per-class F1 bars."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

BACKGROUND, INK, GRID = (255, 255, 255), (20, 20, 20), (200, 200, 200)


def _text(draw: ImageDraw.ImageDraw, xy, text: str, fill=INK, anchor: str = "la") -> None:
    draw.text(xy, text, fill=fill, anchor=anchor)


def confusion_matrix_picture(matrix: np.ndarray, labels: list[str], title: str) -> Image.Image:
    """Rows: true class; columns: predicted. Each cell shows its count and is shaded by the row's share (recall
    on the diagonal), so rare classes read as clearly as common ones."""
    n = len(labels)
    cell, left, top = 64, 110, 60
    image = Image.new("RGB", (left + n * cell + 20, top + n * cell + 90), BACKGROUND)
    draw = ImageDraw.Draw(image)
    _text(draw, (10, 10), title)
    _text(draw, (left + n * cell / 2, top - 30), "predicted", anchor="ma")
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    for i in range(n):
        _text(draw, (left - 8, top + i * cell + cell / 2), labels[i][:13], anchor="rm")
        for j in range(n):
            shade = int(255 - 200 * share[i, j])
            colour = (shade, shade, 255) if i == j else (255, shade, shade)
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell, y0 + cell], fill=colour, outline=GRID)
            _text(draw, (x0 + cell / 2, y0 + cell / 2 - 6), str(int(matrix[i, j])), anchor="mm")
            _text(draw, (x0 + cell / 2, y0 + cell / 2 + 8), f"{share[i, j]:.0%}", fill=(90, 90, 90), anchor="mm")
    for j in range(n):
        _text(draw, (left + j * cell + cell / 2, top + n * cell + 6), labels[j][:9], anchor="ma")
    _text(draw, (left + n * cell / 2, top + n * cell + 30), "rows: true class; shade: share of the row", anchor="ma")
    return image


def f1_bars_picture(scores: dict[str, float], title: str) -> Image.Image:
    """One horizontal bar per class, its F1 written beside it."""
    names = list(scores)
    width, left, bar, top = 420, 110, 26, 40
    image = Image.new("RGB", (left + width + 70, top + len(names) * bar + 20), BACKGROUND)
    draw = ImageDraw.Draw(image)
    _text(draw, (10, 10), title)
    for i, name in enumerate(names):
        y = top + i * bar
        value = float(scores[name])
        draw.rectangle([left, y + 4, left + width, y + bar - 4], outline=GRID)
        draw.rectangle([left, y + 4, left + max(0.0, min(1.0, value)) * width, y + bar - 4], fill=(70, 110, 200))
        _text(draw, (left - 8, y + bar / 2), name[:14], anchor="rm")
        _text(draw, (left + width + 8, y + bar / 2), f"{value:.3f}", anchor="lm")
    return image
