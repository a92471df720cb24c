"""`edgeattn show FOLDER`: pictures of what pruning keeps, and of a sparse decoder layer's block layout."""

from __future__ import annotations

from typing import Any

import click

from edgeattn.cli.common import emit_json, json_option
from edgeattn.errors import EdgeAttnError

MAX_PANELS = 8  # FOLDER and up to 7 --compare folders side by side
MAX_TEXT_GRID = 64  # a layout wider than this many blocks is not printed as text


@click.command("show", short_help="Draw kept visual tokens, or a sparse layer's block layout.")
@click.argument("folder", type=click.Path())
@click.option("--image", type=click.Path(), help="Image file: draw the visual tokens each folder keeps for it.")
@click.option("--compare", "compare", multiple=True, type=click.Path(), metavar="FOLDER2",
              help="Another exported folder drawn beside FOLDER on the same image (repeatable).")
@click.option("--prompt", help="Text for text-guided pruning (flashvlm), or the text whose block layout "
                               "--layer/--head draw.")
@click.option("--image-tokens", type=int, help="Visual tokens to keep, for folders with a run-time budget (dynamic=1).")
@click.option("--layer", type=int, help="Decoder layer whose block-sparse layout to draw (with --head and --prompt).")
@click.option("--head", type=int, help="Query head of that layer (its key/value head's layout is drawn).")
@click.option("--out", required=True, type=click.Path(), help="The PNG picture to write.")
@click.option("--threads", type=click.IntRange(min=1, max=1024), help="onnxruntime intra-op threads.")
@json_option
def show(folder: str, image: str | None, compare: tuple[str, ...], prompt: str | None, image_tokens: int | None,
         layer: int | None, head: int | None, out: str, threads: int | None, as_json: bool) -> None:
    """Draw the kept visual tokens of FOLDER (and each --compare folder) on --image: kept patches bright and
    outlined, dropped ones dimmed, one panel per folder. Or, with --layer N --head H --prompt TEXT, draw the
    key blocks a block-sparse decoder layer keeps for each query block of the prompt as a heat map.

    Prints the kept indices (or the layout) too; --json prints them as one object.
    """
    if layer is not None or head is not None:
        result = _layout(folder, image, compare, prompt, image_tokens, layer, head, out, threads)
    else:
        result = _kept(folder, image, compare, prompt, image_tokens, out, threads)
    if as_json:
        emit_json(result)
    elif "panels" in result:
        _print_kept(result)
    else:
        _print_layout(result)


def _kept(folder: str, image: str | None, compare: tuple[str, ...], prompt: str | None, image_tokens: int | None,
          out: str, threads: int | None) -> dict[str, Any]:
    from edgeattn.runtime.images import load_image
    from edgeattn.show import check_out_path, kept_picture, show_kept, write_png

    if image is None:
        raise EdgeAttnError("show needs --image FILE to draw the visual tokens a folder keeps (or --layer N --head H "
                            "--prompt TEXT to draw a block-sparse decoder's layout)")
    folders = [folder, *compare]
    if len(folders) > MAX_PANELS:
        raise EdgeAttnError(f"show draws at most {MAX_PANELS} panels (FOLDER and {MAX_PANELS - 1} --compare); "
                            f"got {len(folders)}")
    path = check_out_path(out, [image])
    panels = show_kept(folders, load_image(image), prompt, image_tokens, threads)
    picture, record = kept_picture(panels)
    write_png(picture, path, record)
    return {"out": str(path), "image": image, "panels": [p.to_json() for p in panels]}


def _layout(folder: str, image: str | None, compare: tuple[str, ...], prompt: str | None, image_tokens: int | None,
            layer: int | None, head: int | None, out: str, threads: int | None) -> dict[str, Any]:
    from edgeattn.show import block_layout, check_out_path, layout_picture, write_png

    if layer is None or head is None:
        raise EdgeAttnError("--layer and --head go together: give both to draw a block-sparse layer's layout")
    if image is not None or compare or image_tokens is not None:
        raise EdgeAttnError("--layer/--head draw a decoder layer's block layout for --prompt; --image, --compare and "
                            "--image-tokens belong to the kept-token picture, so drop them")
    if prompt is None:
        raise EdgeAttnError("--layer/--head need --prompt TEXT: the layout is chosen from the prompt's queries "
                            "and keys")
    path = check_out_path(out)
    layout = block_layout(folder, prompt, layer, head, threads)
    picture, record = layout_picture(layout)
    write_png(picture, path, record)
    return {"out": str(path), **layout.to_json()}


def _print_kept(result: dict[str, Any]) -> None:
    for panel in result["panels"]:
        side = panel["grid"][0]
        what = (f"{panel['method']} keeps {panel['k']} of {panel['tokens']}" if panel["method"]
                else f"no pruning: all {panel['tokens']}")
        click.echo(f"{panel['folder']}: {what} patches ({side}x{side} grid, row-major)")
        click.echo("  kept_indices " + " ".join(str(i) for i in panel["kept_indices"]))
    click.echo(f"wrote {result['out']}")


def _print_layout(result: dict[str, Any]) -> None:
    attrs = result["attributes"]
    click.echo(f"{result['folder']} layer {result['layer']} head {result['head']} (kv head {result['kv_head']}): "
               f"{result['layout']} layout, block {attrs['block_size']}, {result['tokens']} tokens -> "
               f"{result['query_blocks']}x{result['key_blocks']} blocks; kept {result['kept_blocks']} of "
               f"{result['available_blocks']} available ({100 * result['density']:.0f}%)"
               + (", a dense head" if result["dense_head"] else ""))
    if result["key_blocks"] <= MAX_TEXT_GRID:
        for kept, available in zip(result["kept"], result["available"]):
            click.echo("  " + "".join("#" if k else "." if a else " " for k, a in zip(kept, available)))
        click.echo("  (# kept, . skipped, blank hidden by the causal rule; rows: query blocks, columns: key blocks)")
    click.echo(f"wrote {result['out']}")
