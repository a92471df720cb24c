"""Pictures of `show`, drawn pixel-exact with Pillow (colours from a matplotlib colormap), written atomically.

Kept tokens (`kept_picture`): one panel per folder, side by side; each panel is the model's square input
scaled to a whole number of pixels per patch, kept patches at full brightness with a `KEPT_OUTLINE` border,
dropped patches at `DIM` brightness (so no dropped pixel can equal the outline colour), a two-line title.
Block layout (`layout_picture`): query blocks down, key blocks across; an available block is coloured by the
score the selection ranks (viridis, from its row's lowest to its highest score), kept blocks at full colour with a
`LAYOUT_OUTLINE` border, skipped ones at `DIM_LAYOUT`, blocks the causal rule hides in `HIDDEN` grey.

Each PNG carries a text chunk `edgeattn.show` (JSON) saying where its grids are (origin, cell size, grid
size, colours), so a reader can find every cell without guessing the layout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeattn.errors import EdgeAttnError
from edgeattn.show.kept import KeptPanel
from edgeattn.show.layout import BlockLayout

META_KEY = "edgeattn.show"
KEPT_OUTLINE = (255, 221, 0)
DIM = 0.25  # brightness of a dropped patch
LAYOUT_OUTLINE = (255, 0, 0)
DIM_LAYOUT = 0.35  # brightness of a skipped block's colour
HIDDEN = (236, 236, 236)
BACKGROUND = (255, 255, 255)
INK = (25, 25, 25)
PANEL_PIXELS = 384  # a panel's side, about (a whole number of pixels per patch)
HEATMAP_PIXELS = 480
MARGIN, GAP, TITLE = 12, 16, 44


def kept_picture(panels: Sequence[KeptPanel]) -> tuple[Any, dict[str, Any]]:
    """(Pillow image, its layout record): the panels side by side."""
    from PIL import Image, ImageDraw

    cells = [max(6, round(PANEL_PIXELS / p.side)) for p in panels]
    sizes = [c * p.side for c, p in zip(cells, panels)]
    width = 2 * MARGIN + sum(sizes) + GAP * (len(panels) - 1)
    canvas = Image.new("RGB", (width, 2 * MARGIN + TITLE + max(sizes)), BACKGROUND)
    draw, font = ImageDraw.Draw(canvas), _font(13)
    record: dict[str, Any] = {"kind": "kept", "outline": list(KEPT_OUTLINE), "dim": DIM, "panels": []}
    x = MARGIN
    for panel, cell, size in zip(panels, cells, sizes):
        canvas.paste(Image.fromarray(panel_pixels(panel, cell)), (x, MARGIN + TITLE))
        for line, text in enumerate(_kept_title(panel)):
            draw.text((x, MARGIN + line * 18), _fit(text, size, font), fill=INK, font=font)
        record["panels"].append({"folder": panel.folder, "x": x, "y": MARGIN + TITLE, "cell": cell, "side": panel.side,
                                 "method": panel.method, "k": panel.k, "tokens": panel.tokens})
        x += size + GAP
    return canvas, record


def panel_pixels(panel: KeptPanel, cell: int) -> np.ndarray:
    """uint8 [side·cell, side·cell, 3]: the model's input scaled up, dropped patches dimmed, kept ones outlined."""
    from PIL import Image

    size = panel.side * cell
    image = np.asarray(Image.fromarray(panel.image).resize((size, size), Image.Resampling.BICUBIC))
    grid = np.zeros(panel.side * panel.side, bool)
    grid[list(panel.kept)] = True
    kept = np.repeat(np.repeat(grid.reshape(panel.side, panel.side), cell, 0), cell, 1)
    out = np.where(kept[..., None], image, (image.astype(np.float32) * DIM).astype(np.uint8))
    out[kept & _cell_borders(size, cell)] = KEPT_OUTLINE
    return out


def layout_picture(layout: BlockLayout) -> tuple[Any, dict[str, Any]]:
    """(Pillow image, its layout record): the block layout as a heat map with axes and a legend."""
    from PIL import Image, ImageDraw

    rows, cols = layout.kept.shape
    cell = int(np.clip(HEATMAP_PIXELS // max(rows, cols), 5, 40))
    left, top = MARGIN + 44, MARGIN + TITLE + 20
    width = max(left + cols * cell + MARGIN + 16, 600)
    height = top + rows * cell + 80
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    canvas.paste(Image.fromarray(heatmap_pixels(layout, cell)), (left, top))
    draw, font = ImageDraw.Draw(canvas), _font(12)
    for line, text in enumerate(_layout_title(layout)):
        draw.text((MARGIN, MARGIN + line * 18), _fit(text, width - 2 * MARGIN, font), fill=INK, font=font)
    _axes(draw, font, left, top, rows, cols, cell)
    colour = ("colour: the block score the selection ranks, from its row's lowest (dark) to highest (yellow)"
              if layout.scores is not None else "bright: a kept block")
    legend = (colour, "red border: kept; dim: skipped; grey: hidden by the causal rule")
    for line, text in enumerate(legend):
        draw.text((MARGIN, top + rows * cell + 40 + 16 * line), _fit(text, width - 2 * MARGIN, font), fill=INK,
                  font=font)
    record = {"kind": "layout", "x": left, "y": top, "cell": cell, "rows": rows, "cols": cols,
              "outline": list(LAYOUT_OUTLINE), "hidden": list(HIDDEN), "layer": layout.layer, "head": layout.head}
    return canvas, record


def heatmap_pixels(layout: BlockLayout, cell: int) -> np.ndarray:
    """uint8 [rows·cell, cols·cell, 3]: one cell per (query block, key block)."""
    from matplotlib import colormaps

    rows, cols = layout.kept.shape
    if layout.scores is not None:  # scaled per row, lowest to highest: the selection ranks within a row
        scores = np.where(layout.available, np.nan_to_num(layout.scores, nan=0.0), np.nan)
        low, high = np.nanmin(scores, axis=1, keepdims=True), np.nanmax(scores, axis=1, keepdims=True)
        spread = np.where(high > low, high - low, 1.0)
        relative = np.where(high > low, (np.nan_to_num(scores, nan=0.0) - low) / spread, 1.0)
        colours = colormaps["viridis"](np.clip(relative, 0.0, 1.0))[..., :3]
    else:
        colours = np.broadcast_to(np.asarray(colormaps["viridis"](0.85)[:3]), (rows, cols, 3))
    colours = np.rint(np.asarray(colours) * 255.0)
    colours = np.where(layout.kept[..., None], colours, np.floor(colours * DIM_LAYOUT))
    colours = np.where(layout.available[..., None], colours, np.asarray(HIDDEN, np.float64))
    out = np.repeat(np.repeat(colours.astype(np.uint8), cell, 0), cell, 1)
    kept = np.repeat(np.repeat(layout.kept & layout.available, cell, 0), cell, 1)
    out[kept & _cell_borders((rows * cell, cols * cell), cell)] = LAYOUT_OUTLINE
    return out


def _cell_borders(size: int | tuple[int, int], cell: int) -> np.ndarray:
    """bool [H, W]: the pixels on the border of their cell (2 pixels wide from 12-pixel cells, else 1)."""
    height, width = (size, size) if isinstance(size, int) else size
    width_px = 2 if cell >= 12 else 1
    ys, xs = np.arange(height) % cell, np.arange(width) % cell
    row = (ys < width_px) | (ys >= cell - width_px)
    col = (xs < width_px) | (xs >= cell - width_px)
    return row[:, None] | col[None, :]


def _axes(draw: Any, font: Any, left: int, top: int, rows: int, cols: int, cell: int) -> None:
    """Tick labels every few blocks and the axis names."""
    step = next(s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if s * cell >= 24)
    for j in range(0, cols, step):
        draw.text((left + j * cell + cell // 2 - 4, top + rows * cell + 4), str(j), fill=INK, font=font)
    for t in range(0, rows, step):
        draw.text((left - 30, top + t * cell + cell // 2 - 7), f"{t:>3}", fill=INK, font=font)
    draw.text((left, top + rows * cell + 20), "key block", fill=INK, font=font)
    draw.text((MARGIN, top - 16), "query block", fill=INK, font=font)


def _kept_title(panel: KeptPanel) -> list[str]:
    name = Path(panel.folder).name or panel.folder
    if panel.method is None:
        return [name, f"no pruning: all {panel.tokens} of {panel.tokens} patches"]
    notes = [n for n, on in (("prompt-guided", panel.text_guided), ("run-time budget", panel.dynamic)) if on]
    return [name, f"{panel.method}: {panel.k} of {panel.tokens} kept" + (f" ({', '.join(notes)})" if notes else "")]


def _layout_title(layout: BlockLayout) -> list[str]:
    name = Path(layout.folder).name or layout.folder
    first, last = layout.query_heads
    attrs = layout.attributes
    kept, available = int(layout.kept.sum()), int(layout.available.sum())
    rule = {"select": f"select {attrs.get('mode')}", "mask": "block mask", "window": f"window {attrs.get('window')}"}
    how = rule.get(layout.layout, layout.layout) + (" (dense head)" if layout.dense_head else "")
    return [f"{name}: layer {layout.layer}, head {layout.head} (kv head {layout.kv_head}, query heads {first}-{last})",
            f"{how}, block {layout.block_size}, {layout.tokens} tokens: kept {kept} of {available} available blocks "
            f"({100.0 * kept / max(available, 1):.0f}%)"]


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _fit(text: str, width: int, font: Any) -> str:
    """`text` cut (with an ellipsis) to `width` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


# -- writing ---------------------------------------------------------------------------------------------


def check_out_path(out: str | Path, inputs: Sequence[str | Path] = ()) -> Path:
    """The PNG to write: a .png path in an existing folder that is none of the inputs."""
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise EdgeAttnError(f"--out {str(out)!r} is not a .png file name; show writes PNG pictures")
    if path.is_dir():
        raise EdgeAttnError(f"--out {str(out)!r} is a folder; give the path of the .png file to write")
    if not path.parent.is_dir():
        raise EdgeAttnError(f"the folder of --out {str(out)!r} does not exist; create it first")
    resolved = path.resolve()
    for item in inputs:
        if Path(item).resolve() == resolved:
            raise EdgeAttnError(f"--out {str(out)!r} would overwrite the input {str(item)!r}; write the picture "
                                "elsewhere")
    return path


def write_png(image: Any, out: str | Path, record: dict[str, Any]) -> Path:
    """Write `image` to `out` atomically (a temporary file in the same folder, renamed into place), with
    `record` as the PNG text chunk `edgeattn.show`."""
    from PIL.PngImagePlugin import PngInfo

    path = Path(out)
    info = PngInfo()
    info.add_text(META_KEY, json.dumps(record))
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        image.save(staged, format="PNG", pnginfo=info)
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    return path


def read_record(path: str | Path) -> dict[str, Any]:
    """The `edgeattn.show` record of a PNG that show wrote."""
    from PIL import Image

    with Image.open(path) as image:
        text = image.text.get(META_KEY) if hasattr(image, "text") else None
    if not text:
        raise EdgeAttnError(f"{path} carries no {META_KEY} record; it was not written by `edgeattn show`")
    return json.loads(text)
