"""The pictures of an evaluation report, drawn with PIL: a confusion matrix and per-class F1 bars."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND, INK, GRID, WHITE = (255, 255, 255), (20, 20, 20), (200, 200, 200), (255, 255, 255)
FAINT = (150, 150, 150)  # a zero count: nothing to read, so it recedes


def _text(draw: ImageDraw.ImageDraw, xy, text: str, fill=INK, anchor: str = "la", font=None) -> None:
    draw.text(xy, text, fill=fill, anchor=anchor, font=font)


def luminance(rgb) -> float:
    """Relative luminance of an sRGB colour (WCAG 2): 0 for black, 1 for white."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (v / 255 for v in rgb[:3])]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def ink_on(fill) -> tuple[int, int, int]:
    """The text colour that reads on a cell of colour `fill`: white on dark, near-black on light, whichever has the
    larger contrast ratio (WCAG)."""
    lum = luminance(fill)
    on_white, on_ink = (1.05) / (lum + 0.05), (lum + 0.05) / (luminance(INK) + 0.05)
    return WHITE if on_white > on_ink else INK


def shown_classes(matrix: np.ndarray, labels: list[str], all_classes: bool = False) -> tuple[list[int], list[str]]:
    """(indices of the classes a confusion matrix draws, names of those left out). Left out unless `all_classes`:
    the classes in neither the truth (row) nor the predictions (column), whose empty row and column would take
    most of the picture when a split holds few of the label space's classes."""
    n = len(labels)
    used = (matrix[:n, :n].sum(axis=1) > 0) | (matrix[:n, :n].sum(axis=0) > 0)
    if all_classes or not used.any():
        return list(range(n)), []
    return [i for i in range(n) if used[i]], [labels[i] for i in range(n) if not used[i]]


def confusion_matrix_picture(matrix: np.ndarray, labels: list[str], title: str,
                             all_classes: bool = False) -> Image.Image:  # fmt: skip
    """Rows: true class; columns: predicted. Each cell shows its count and is shaded by the row's share (recall
    on the diagonal), so rare classes read as clearly as common ones; its text is white on dark cells. Classes
    in neither truth nor predictions are left out (named under the grid) unless `all_classes`."""
    keep, left_out = shown_classes(matrix, labels, all_classes)
    matrix = matrix[np.ix_(keep, keep)]
    names = [labels[i] for i in keep]
    count_font, share_font, font = (ImageFont.load_default(size) for size in (15, 12, 13))
    n = len(names)
    cell, top = 72, 64
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = 24 + max(measure.textlength(name[:14], font=font) for name in names)
    footer = ["rows: true class; columns: predicted; shade: share of the row"]
    if left_out:
        footer += [f"left out, in neither truth nor predictions: {', '.join(left_out)}",
                   "(`eval report --all-classes` draws them)"]  # fmt: skip
    width = max(left + n * cell + 20, 20 + max(measure.textlength(line, font=font) for line in footer))
    image = Image.new("RGB", (int(width), top + n * cell + 40 + 20 * len(footer)), BACKGROUND)
    draw = ImageDraw.Draw(image)
    _text(draw, (10, 10), title, font=font)
    _text(draw, (left + n * cell / 2, top - 24), "predicted", anchor="ma", font=font)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    for i in range(n):
        _text(draw, (left - 8, top + i * cell + cell / 2), names[i][:14], anchor="rm", font=font)
        for j in range(n):
            shade = int(255 - 200 * share[i, j])
            colour = (shade, shade, 255) if i == j else (255, shade, shade)
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell, y0 + cell], fill=colour, outline=GRID)
            if matrix[i, j] == 0:
                _text(draw, (x0 + cell / 2, y0 + cell / 2), "0", fill=FAINT, anchor="mm", font=share_font)
                continue
            ink = ink_on(colour)
            _text(draw, (x0 + cell / 2, y0 + cell / 2 - 8), str(int(matrix[i, j])), fill=ink, anchor="mm",
                  font=count_font)  # fmt: skip
            _text(draw, (x0 + cell / 2, y0 + cell / 2 + 10), f"{share[i, j]:.0%}", fill=ink, anchor="mm",
                  font=share_font)  # fmt: skip
    for j in range(n):
        _text(draw, (left + j * cell + cell / 2, top + n * cell + 6), names[j][:10], anchor="ma", font=share_font)
    for k, line in enumerate(footer):
        _text(draw, (10, top + n * cell + 34 + 20 * k), line, fill=(90, 90, 90), font=font)
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


CLASS_COLOURS = [(120, 120, 120), (220, 50, 47), (133, 153, 0), (108, 113, 196), (255, 200, 0), (38, 139, 210),
                 (211, 54, 130), (42, 161, 152), (181, 137, 0), (203, 75, 22), (88, 110, 117)]  # fmt: skip
INVALID = (235, 235, 235)


def _class_legend(draw: ImageDraw.ImageDraw, left: float, y: float, labels) -> None:
    """A swatch and the name of each class, 100 px apart."""
    for k, label in enumerate(labels):
        x0 = left + k * 100
        draw.rectangle([x0, y, x0 + 12, y + 12], fill=CLASS_COLOURS[k % len(CLASS_COLOURS)])
        _text(draw, (x0 + 16, y), label[:12])


def timelines_picture(videos: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], task: str, labels: list[str],
                      width: int = 900) -> Image.Image:  # fmt: skip
    """One panel per video along its frames: for classes (expressions, A/H) a strip of the true class over a strip
    of the predicted one (invalid frames pale); for valence/arousal the true (dark) and predicted (blue) curves.
    `videos`: (name, frame numbers, truth, prediction)."""
    left, panel, gap = 120, 56 if task != "va" else 120, 18
    legend = 40 if task != "va" else 24
    image = Image.new("RGB", (left + width + 20, 30 + len(videos) * (panel + gap) + legend), BACKGROUND)
    draw = ImageDraw.Draw(image)
    _text(draw, (10, 8), f"{task}: per-video timelines (truth against prediction)")
    for v, (name, frames, truth, pred) in enumerate(videos):
        top = 30 + v * (panel + gap)
        _text(draw, (8, top + panel / 2), name[:16], anchor="lm")
        n = len(frames)
        x = lambda i, n=n: left + (i / max(1, n - 1)) * width if n > 1 else left  # noqa: E731
        if task == "va":
            for row, label in enumerate(("valence", "arousal")):
                y0 = top + row * panel / 2
                height = panel / 2 - 6
                draw.rectangle([left, y0, left + width, y0 + height], outline=GRID)
                _text(draw, (left - 6, y0 + height / 2), label, fill=(90, 90, 90), anchor="rm")
                y = lambda value, y0=y0, height=height: y0 + (1 - (float(value) + 1) / 2) * height  # noqa: E731
                valid = np.all(truth != -5, axis=1)
                for series, colour, mask in ((truth[:, row], INK, valid), (pred[:, row], (38, 139, 210), None)):
                    points = [(x(i), y(series[i])) for i in range(n) if mask is None or mask[i]]
                    if len(points) > 1:
                        draw.line(points, fill=colour, width=2)
            continue
        half = panel / 2 - 3
        for row, series in enumerate((truth, pred)):
            y0 = top + row * (half + 6)
            for i in range(n):
                value = int(series[i])
                colour = INVALID if value < 0 else CLASS_COLOURS[value % len(CLASS_COLOURS)]
                x0, x1 = x(i), x(i + 1) if i + 1 < n else left + width
                draw.rectangle([x0, y0, max(x0 + 1, x1), y0 + half], fill=colour)
            _text(draw, (left - 6, y0 + half / 2), "true" if row == 0 else "predicted", fill=(90, 90, 90), anchor="rm")
    y = 30 + len(videos) * (panel + gap)
    if task == "va":
        _text(draw, (left, y), "dark: annotation, blue: prediction; scale -1 (bottom) to 1 (top)")
    else:
        _class_legend(draw, left, y, labels)
    return image


LIVE_CLASS_FIELDS = {"expr": "label", "ah": "ambivalence_hesitancy"}  # the field of a class answer, per task


def live_timeline_picture(answers: list[dict], task: str, labels: list[str], hop_s: float = 1.0,
                          span_s: float | None = None, now_s: float | None = None, width: int = 900,
                          title: str | None = None) -> Image.Image:  # fmt: skip
    """A live session's answers over time (`LiveAnswer.to_json()` records): each answer colours the last hop of
    its window. Classes (expressions, A/H) as one strip, action units as a row per AU, valence/arousal as curves;
    under them a strip of where a face was seen. Windows without an answer (skipped, failed, unparsable) stay pale.
    `span_s`: only the last `span_s` seconds up to `now_s` (the demo's last minute); else the whole session."""
    from mllm.labels import ABAW_AUS

    ends = [float(a["end_s"]) for a in answers]
    end = now_s if now_s is not None else max(ends, default=0.0)
    start = end - span_s if span_s else min((float(a["start_s"]) for a in answers), default=0.0)
    start = max(0.0, start) if not span_s else start
    length = max(end - start, 1e-6)
    left, right = 110, 20
    x = lambda t: left + (min(max(t, start), end) - start) / length * width  # noqa: E731
    rows = list(ABAW_AUS) if task == "au" else []
    panel = 120 if task == "va" else (14 * len(rows) if rows else 40)
    top, face_h = 34, 12
    legend = 24 if task in ("va", "au") else 40
    image = Image.new("RGB", (left + width + right, top + panel + 12 + face_h + 28 + legend), BACKGROUND)
    draw = ImageDraw.Draw(image)
    _text(draw, (10, 8), title or f"{task}: answers over time (each colours the last {hop_s:g} s of its window)")
    draw.rectangle([left, top, left + width, top + panel], fill=(245, 245, 245), outline=GRID)
    shown = [a for a in answers if float(a["end_s"]) > start]
    segment = lambda a: (x(float(a["end_s"]) - hop_s), x(float(a["end_s"])))  # noqa: E731
    answered = lambda a: a.get("ok") and not a.get("error")  # noqa: E731
    if task == "va":
        for row, name in enumerate(("valence", "arousal")):
            y0, height = top + row * panel / 2 + 3, panel / 2 - 6
            _text(draw, (left - 6, y0 + height / 2), name, fill=(90, 90, 90), anchor="rm")
            draw.line([left, y0 + height / 2, left + width, y0 + height / 2], fill=GRID)
            y = lambda v, y0=y0, height=height: y0 + (1 - (float(v) + 1) / 2) * height  # noqa: E731
            points = [(x(float(a["end_s"])), y(a["fields"][name])) for a in shown
                      if answered(a) and a["fields"].get(name) is not None]  # fmt: skip
            if len(points) > 1:
                draw.line(points, fill=(38, 139, 210), width=2)
            for px, py in points:
                draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=(38, 139, 210))
    elif task == "au":
        for r, au in enumerate(rows):
            y0 = top + r * 14
            _text(draw, (left - 6, y0 + 7), au, fill=(90, 90, 90), anchor="rm")
            for a in shown:
                if answered(a) and au in (a["fields"].get("aus") or []):
                    x0, x1 = segment(a)
                    colour = CLASS_COLOURS[r % len(CLASS_COLOURS)]
                    draw.rectangle([x0, y0 + 2, max(x0 + 1, x1 - 1), y0 + 12], fill=colour)
    else:
        index = {name: i for i, name in enumerate(labels)}
        _text(draw, (left - 6, top + panel / 2), "answer", fill=(90, 90, 90), anchor="rm")
        for a in shown:
            value = index.get(a["fields"].get(LIVE_CLASS_FIELDS.get(task, "label"))) if answered(a) else None
            colour = INVALID if value is None else CLASS_COLOURS[value % len(CLASS_COLOURS)]
            x0, x1 = segment(a)
            draw.rectangle([x0, top + 1, max(x0 + 1, x1 - 1), top + panel - 1], fill=colour)
    y_face = top + panel + 12
    _text(draw, (left - 6, y_face + face_h / 2), "face", fill=(90, 90, 90), anchor="rm")
    draw.rectangle([left, y_face, left + width, y_face + face_h], fill=(245, 245, 245), outline=GRID)
    for a in shown:
        x0, x1 = segment(a)
        draw.rectangle([x0, y_face + 1, max(x0 + 1, x1 - 1), y_face + face_h - 1],
                       fill=(60, 60, 60) if a.get("face_seen") else (225, 225, 225))  # fmt: skip
    y_axis = y_face + face_h + 4
    step = next(s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 1e9) if length / s <= 10)
    tick = np.ceil(start / step) * step
    while tick <= end + 1e-9:
        draw.line([x(tick), y_axis, x(tick), y_axis + 4], fill=INK)
        _text(draw, (x(tick), y_axis + 6), f"{tick:g} s", fill=(90, 90, 90), anchor="ma")
        tick += step
    y = y_axis + 24
    if task == "va":
        _text(draw, (left, y), "blue: predicted; scale -1 (bottom) to 1 (top); dark face strip: a face was seen")
    elif task == "au":
        _text(draw, (left, y), "a filled cell: the AU was answered active; dark face strip: a face was seen")
    else:
        _class_legend(draw, left, y, labels)
    return image
