"""Pictures people look at: box, landmarks and the 9 regions drawn over a frame; contact sheets for clips."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from mllm.face.regions import CLOSED_REGIONS, REGIONS

REGION_COLOURS: dict[str, tuple[int, int, int]] = {
    "jaw": (255, 215, 0),
    "right_brow": (255, 99, 71),
    "left_brow": (255, 140, 0),
    "nose_bridge": (50, 205, 50),
    "nostrils": (0, 128, 0),
    "right_eye": (30, 144, 255),
    "left_eye": (0, 206, 209),
    "outer_lips": (218, 112, 214),
    "inner_lips": (199, 21, 133),
}
BOX_COLOUR = (255, 255, 255)
PRIMARY_BOX_COLOUR = (0, 255, 0)


def draw_face(canvas: Image.Image, box, landmarks_68, primary: bool = True, interpolated: bool = False) -> None:
    draw = ImageDraw.Draw(canvas)
    face_width = float(box[2] - box[0])
    width = max(1, round(face_width / 100))  # strokes and dots scale with the face, not the picture
    colour = PRIMARY_BOX_COLOUR if primary else BOX_COLOUR
    draw.rectangle([float(v) for v in box], outline=colour, width=width)
    points = np.asarray(landmarks_68, dtype=float)
    for name, idx in REGIONS.items():
        region = [tuple(p) for p in points[list(idx)]]
        if name in CLOSED_REGIONS:
            region.append(region[0])
        draw.line(region, fill=REGION_COLOURS[name], width=width)
        r = max(1.0, face_width / 90)
        for x, y in region:
            if interpolated:
                draw.ellipse([x - r, y - r, x + r, y + r], outline=REGION_COLOURS[name])
            else:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=REGION_COLOURS[name])


def overlay_image(rgb: np.ndarray, faces) -> Image.Image:
    """`faces`: iterable of (box, landmarks_68, primary)."""
    canvas = Image.fromarray(rgb).convert("RGB")
    for box, points, primary in faces:
        draw_face(canvas, box, points, primary=primary)
    return canvas


def contact_sheet(frames, track, columns: int = 4, tile_width: int = 320, positions=None) -> Image.Image:
    """A grid of frames with the subject's box, landmarks and regions, each captioned with its timestamp and
    status (found / interpolated / NO FACE).

    `frames`: full-size frames or smaller copies (tiles) of them, drawn at `tile_width`; `positions`: the track
    row of each frame (default: frame i is row i), so a long clip can be shown by a few of its frames."""
    n = len(frames)
    positions = list(range(n)) if positions is None else list(positions)
    columns = max(1, min(columns, n))
    rows = (n + columns - 1) // columns
    h, w = track.frame_size if track.frame_size[1] > 0 else frames[0].shape[:2]
    tile_height = max(1, round(tile_width * h / w))
    scale = tile_width / w
    caption = 16
    sheet = Image.new("RGB", (columns * tile_width, rows * (tile_height + caption)), (20, 20, 20))
    for i, row in enumerate(positions):
        tile = Image.fromarray(np.asarray(frames[i])).convert("RGB")
        if tile.size != (tile_width, tile_height):
            tile = tile.resize((tile_width, tile_height), Image.BILINEAR)
        if track.found[row] or track.interpolated[row]:
            draw_face(
                tile,
                track.boxes[row] * scale,
                track.landmarks_68[row] * scale,
                interpolated=bool(track.interpolated[row]),
            )
        x, y = (i % columns) * tile_width, (i // columns) * (tile_height + caption)
        sheet.paste(tile, (x, y + caption))
        status = "found" if track.found[row] else "interpolated" if track.interpolated[row] else "NO FACE"
        colour = (220, 220, 220) if track.found[row] else (255, 200, 0) if track.interpolated[row] else (255, 80, 80)
        ImageDraw.Draw(sheet).text((x + 4, y + 2), f"{track.timestamps_s[row]:.2f}s  {status}", fill=colour)
    return sheet
