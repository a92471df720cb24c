"""`edgeattn show`: pictures to trust pruning and sparsity by.

    panels = show_kept(["llava_fastervlm16", "llava_random16"], load_image("cat.png"))
    image, record = kept_picture(panels); write_png(image, "kept.png", record)

    layout = block_layout("smollm2_block", "The quick brown fox", layer=3, head=0)
    image, record = layout_picture(layout); write_png(image, "layout.png", record)

`kept`: which visual tokens each folder's vision component keeps for an image (its `kept_indices`, drawn on
the patch grid). `layout`: which key blocks a block-sparse decoder layer keeps for each query block on a
prompt, captured from the folder's own graph. `draw`: the pictures, written atomically.
"""

from __future__ import annotations

from edgeattn.show.draw import check_out_path, kept_picture, layout_picture, read_record, write_png
from edgeattn.show.kept import KeptPanel, kept_tokens, show_kept
from edgeattn.show.layout import BlockLayout, block_layout

__all__ = [
    "BlockLayout",
    "KeptPanel",
    "block_layout",
    "check_out_path",
    "kept_picture",
    "kept_tokens",
    "layout_picture",
    "read_record",
    "show_kept",
    "write_png",
]
