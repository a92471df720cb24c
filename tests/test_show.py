"""`edgeattn show`: the kept-token picture read back pixel by pixel equals the vision graph's kept_indices,
--compare panels, text-guided and run-time budgets, the block-sparse heat map against BlockSelect's PyTorch
reference on Q/K captured here, and the one-line refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from edgeattn.graphs import save
from edgeattn.graphs.pruning import prune_file
from edgeattn.graphs.sparse.api import sparsify
from edgeattn.manifest import read_manifest
from edgeattn.ops.block_select.reference import block_geometry, block_select_reference
from edgeattn.ops.block_sparse_attention.reference import causal_visible, window_visible
from edgeattn.runtime.images import load_image, pixel_values
from edgeattn.show.draw import DIM, HIDDEN, KEPT_OUTLINE, LAYOUT_OUTLINE, read_record
from tests.test_cli import invoke

PROMPT = "Describe the picture: a quick brown fox jumps over the lazy dog."
# With random weights the block probabilities are close together. On this prompt every block a layout keeps
# (beyond the forced sink and diagonal ones) beats every block it skips by about 1e-4 in probability, three
# orders above float32 rounding, so the layouts are compared exactly.
LAYOUT_PROMPT = "A red boat rests on calm water under a grey sky."
BLOCK = 4


# -- folders -----------------------------------------------------------------------------------------------


def _variant(dense, root, name: str, vision_spec: str | None = None, sparse: tuple[str, ...] = (),
             lowering: str = "fast"):
    """A copy of the tiny VLM folder with its vision pruned by `prune_file` (no manifest pruning record: show
    reads the graph's own) and/or its decoder made block-sparse."""
    folder = root / name
    shutil.copytree(dense, folder)
    if vision_spec is not None:
        prune_file(dense / "vision.onnx", folder / "vision.onnx", vision_spec)
    if sparse:
        model, _ = sparsify(dense / "decoder.onnx", sparse, component="decoder", lowering=lowering)
        save(model, folder / "decoder.onnx")
    return folder


@pytest.fixture(scope="module")
def folders(exported, tmp_path_factory):
    dense = exported("demo:tiny-llava")
    root = tmp_path_factory.mktemp("show")
    made = {"dense": dense}
    for name, spec in (("fastervlm", "fastervlm:16"), ("random", "random:16"), ("flash", "flashvlm:8"),
                       ("dynamic", "fastervlm:16,dynamic=1")):
        made[name] = _variant(dense, root, name, spec)
    block = (f"block:keep=0.5,block={BLOCK}",)
    made["sparse_fast"] = _variant(dense, root, "sparse_fast", sparse=block)
    made["sparse_body"] = _variant(dense, root, "sparse_body", sparse=block, lowering="function")
    made["sparse_heads"] = _variant(dense, root, "sparse_heads", sparse=(f"block:keep=0.25,block={BLOCK},heads=0",))
    made["window"] = _variant(dense, root, "window", sparse=(f"window:size=8,sinks=2,block={BLOCK}",))
    Image.fromarray(_photo()).save(root / "photo.png")
    made["image"] = root / "photo.png"
    return made


def _photo() -> np.ndarray:
    from skimage import data

    return data.astronaut()


# -- what the graphs say, computed here ------------------------------------------------------------------


def _own_kept(folder, image, text: str | None = None, num_tokens: int | None = None) -> list[int]:
    """kept_indices of the folder's vision graph, run here with onnxruntime on `run`'s preprocessing."""
    manifest = read_manifest(folder)
    session = ort.InferenceSession(str(folder / "vision.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"pixel_values": pixel_values(load_image(image), manifest.vision.preprocess())}
    if text is not None:
        feeds["text_embeds"] = _embeds(folder, _ids(folder, text))
    if num_tokens is not None:
        feeds["num_tokens"] = np.array(num_tokens, np.int64)
    return session.run(["kept_indices"], feeds)[0][0].tolist()


def _ids(folder, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return list(AutoTokenizer.from_pretrained(folder / "tokenizer")(text)["input_ids"])


def _embeds(folder, ids: list[int]) -> np.ndarray:
    session = ort.InferenceSession(str(folder / "embed.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": np.asarray([ids], np.int64)})[0]


def _qk_and_attributes(folder, layer: int, text: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Q and K entering layer `layer`'s BlockSparseAttention node (function-body folder), from one prefill,
    and the node's attributes."""
    model = onnx.load(str(folder / "decoder.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "BlockSparseAttention"
                and {p.key: p.value for p in n.metadata_props}.get("edgeattn.layer") == str(layer))
    for name in node.input[:2]:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = _ids(folder, text)
    feeds = {"inputs_embeds": _embeds(folder, ids), "attention_mask": np.ones((1, len(ids)), np.int64),
             "position_ids": np.arange(len(ids))[None]}
    for item in session.get_inputs():
        if item.name.startswith("past_key_values."):
            feeds[item.name] = np.zeros((1, 2, 0, 16), np.float32)
    q, k = session.run(list(node.input[:2]), feeds)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return q, k, {n: (v.decode() if isinstance(v, bytes) else v) for n, v in attrs.items()}


def _reference_layout(q: np.ndarray, k: np.ndarray, attrs: dict, kv_head: int) -> np.ndarray:
    """BlockSelect's PyTorch reference (float32, as the graph computes) for one key/value head."""
    names = ("scale", "causal", "block_size", "mode", "keep", "keep_blocks", "threshold", "cum_prob", "query_pool",
             "key_pool", "group_reduce", "local_blocks", "sink_blocks", "dense_last_rows", "dense_decode")
    mask = block_select_reference(torch.from_numpy(q), torch.from_numpy(k), compute_dtype=torch.float32,
                                  **{n: attrs[n] for n in names})
    return mask[0, kv_head].numpy()


# -- reading the pictures back ---------------------------------------------------------------------------


def _kept_cells(png, panel: dict) -> list[int]:
    """Grid positions whose cell border is the kept outline; every other cell must be dimmed."""
    pixels = np.asarray(Image.open(png).convert("RGB"))
    x, y, cell, side = panel["x"], panel["y"], panel["cell"], panel["side"]
    kept = []
    for index in range(side * side):
        r, c = divmod(index, side)
        block = pixels[y + r * cell: y + (r + 1) * cell, x + c * cell: x + (c + 1) * cell]
        border = np.concatenate([block[0], block[-1], block[:, 0], block[:, -1]])
        if (border == KEPT_OUTLINE).all():
            kept.append(index)
        else:
            assert block.max() <= 255 * DIM, f"cell {index} is neither outlined nor dimmed"
    return kept


def _heatmap_cells(png) -> tuple[np.ndarray, np.ndarray]:
    """(kept, available) read from the heat map's pixels: a red-bordered cell is kept, a grey one hidden."""
    record = read_record(png)
    pixels = np.asarray(Image.open(png).convert("RGB"))
    x, y, cell, rows, cols = (record[k] for k in ("x", "y", "cell", "rows", "cols"))
    kept, available = np.zeros((rows, cols), bool), np.zeros((rows, cols), bool)
    for r in range(rows):
        for c in range(cols):
            block = pixels[y + r * cell: y + (r + 1) * cell, x + c * cell: x + (c + 1) * cell]
            border = np.concatenate([block[0], block[-1], block[:, 0], block[:, -1]])
            kept[r, c] = (border == LAYOUT_OUTLINE).all()
            available[r, c] = not (block == HIDDEN).all()
    return kept, available


def _show(args: list[str], capsys) -> tuple[int, str, str]:
    return invoke(["show", *map(str, args)], capsys)


# -- kept tokens -----------------------------------------------------------------------------------------


def test_picture_highlights_exactly_the_kept_indices(folders, tmp_path, capsys):
    out = tmp_path / "kept.png"
    code, stdout, err = _show([folders["fastervlm"], "--image", folders["image"], "--out", out, "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    want = _own_kept(folders["fastervlm"], folders["image"])
    assert len(want) == 16 and result["panels"][0]["kept_indices"] == want
    (panel,) = read_record(out)["panels"]
    assert panel["side"] == 8 and panel["method"] == "fastervlm"
    assert _kept_cells(out, panel) == want
    code, stdout, _ = _show([folders["fastervlm"], "--image", folders["image"], "--out", out], capsys)
    assert code == 0 and " ".join(map(str, want)) in stdout and "16 of 64" in stdout


def test_compare_draws_one_panel_per_folder_side_by_side(folders, tmp_path, capsys):
    out = tmp_path / "both.png"
    code, _, err = _show([folders["fastervlm"], "--compare", folders["random"], "--compare", folders["dense"],
                          "--image", folders["image"], "--out", out], capsys)
    assert code == 0, err
    panels = read_record(out)["panels"]
    assert [p["method"] for p in panels] == ["fastervlm", "random", None]
    assert panels[0]["x"] < panels[1]["x"] < panels[2]["x"] and len({p["y"] for p in panels}) == 1
    for panel, folder in zip(panels[:2], ("fastervlm", "random")):
        assert _kept_cells(out, panel) == _own_kept(folders[folder], folders["image"])
    assert _kept_cells(out, panels[2]) == list(range(64))  # the unpruned baseline keeps every patch
    assert _own_kept(folders["fastervlm"], folders["image"]) != _own_kept(folders["random"], folders["image"])


def test_text_guided_pruning_reads_the_prompt(folders, tmp_path, capsys):
    out = tmp_path / "flash.png"
    code, _, err = _show([folders["flash"], "--image", folders["image"], "--out", out], capsys)
    assert code == 1 and "prunes by the prompt" in err and "--prompt" in err and len(err.strip().splitlines()) == 1
    code, stdout, err = _show([folders["flash"], "--image", folders["image"], "--prompt", PROMPT, "--out", out,
                               "--json"], capsys)
    assert code == 0, err
    (panel,) = json.loads(stdout)["panels"]
    want = _own_kept(folders["flash"], folders["image"], text=PROMPT)
    assert panel["kept_indices"] == want and panel["text_guided"] and len(want) == 8
    assert _kept_cells(out, read_record(out)["panels"][0]) == want


def test_run_time_budget(folders, tmp_path, capsys):
    out = tmp_path / "five.png"
    code, stdout, err = _show([folders["dynamic"], "--image", folders["image"], "--image-tokens", 5, "--out", out,
                               "--json"], capsys)
    assert code == 0, err
    want = _own_kept(folders["dynamic"], folders["image"], num_tokens=5)
    assert json.loads(stdout)["panels"][0]["kept_indices"] == want and len(want) == 5
    assert _kept_cells(out, read_record(out)["panels"][0]) == want
    code, _, err = _show([folders["fastervlm"], "--image", folders["image"], "--image-tokens", 5, "--out", out], capsys)
    assert code == 1 and "no folder given takes one" in err


def test_cls_token_is_not_a_grid_cell(exported, tmp_path, capsys):
    """tiny-vit outputs [CLS] + 16 patches; with keep_cls=1 the [CLS] stays in the tokens, yet kept_indices
    (and the picture) are patch positions on the 4x4 grid."""
    vit = tmp_path / "vit"
    shutil.copytree(exported("demo:tiny-vit"), vit)
    prune_file(vit / "vision.onnx", vit / "vision.onnx", "fastervlm:5,keep_cls=1")
    Image.fromarray(_photo()).save(tmp_path / "photo.png")
    out = tmp_path / "vit.png"
    code, stdout, err = _show([vit, "--image", tmp_path / "photo.png", "--out", out, "--json"], capsys)
    assert code == 0, err
    want = _own_kept(vit, tmp_path / "photo.png")
    (panel,) = read_record(out)["panels"]
    assert panel["side"] == 4 and json.loads(stdout)["panels"][0]["tokens"] == 16
    assert _kept_cells(out, panel) == want and len(want) == 5


# -- block layout ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sparse_fast", "sparse_body"])
def test_heat_map_equals_the_block_rule_on_captured_qk(folders, tmp_path, capsys, name):
    q, k, attrs = _qk_and_attributes(folders["sparse_body"], 1, LAYOUT_PROMPT)
    out = tmp_path / "layout.png"
    code, stdout, err = _show([folders[name], "--prompt", LAYOUT_PROMPT, "--layer", 1, "--head", 3, "--out", out,
                               "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    want = _reference_layout(q, k, attrs, kv_head=1)
    causal = np.tril(np.ones(want.shape, bool))
    assert result["kv_head"] == 1 and result["query_heads"] == [2, 3] and result["layout"] == "select"
    assert np.array_equal(np.asarray(result["kept"], bool), want)
    kept, available = _heatmap_cells(out)
    assert np.array_equal(kept, want) and np.array_equal(available, causal)
    assert want.shape == (-(-len(_ids(folders[name], LAYOUT_PROMPT)) // BLOCK),) * 2 and not want.all()


def test_dense_head_and_window_layouts(folders, tmp_path, capsys):
    out = tmp_path / "heads.png"
    q, k, attrs = _qk_and_attributes(folders["sparse_body"], 0, LAYOUT_PROMPT)
    layouts = {}
    for head in (0, 3):
        code, stdout, err = _show([folders["sparse_heads"], "--prompt", LAYOUT_PROMPT, "--layer", 0, "--head", head,
                                   "--out", out, "--json"], capsys)
        assert code == 0, err
        layouts[head] = json.loads(stdout)
    keep_quarter = {**attrs, "keep": 0.25}
    assert np.array_equal(np.asarray(layouts[0]["kept"], bool), _reference_layout(q, k, keep_quarter, kv_head=0))
    assert layouts[3]["dense_head"] and layouts[3]["kept"] == layouts[3]["available"]
    code, stdout, err = _show([folders["window"], "--prompt", LAYOUT_PROMPT, "--layer", 1, "--head", 0, "--out", out,
                               "--json"], capsys)
    assert code == 0, err
    tokens = len(_ids(folders["window"], LAYOUT_PROMPT))
    geo = block_geometry(tokens, tokens, BLOCK, 2)
    visible = (window_visible(geo, 8, 2) & causal_visible(geo)).numpy()
    count = -(-tokens // BLOCK)
    padded = np.zeros((count * BLOCK, count * BLOCK), bool)
    padded[:tokens, :tokens] = visible
    want = padded.reshape(count, BLOCK, count, BLOCK).any(axis=(1, 3))
    assert np.array_equal(np.asarray(json.loads(stdout)["kept"], bool), want)
    assert np.array_equal(_heatmap_cells(out)[0], want)


# -- refusals --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (lambda f, t: [f["fastervlm"], "--out", t / "a.png"], "needs --image FILE"),
    (lambda f, t: [f["dense"], "--image", f["image"], "--out", t / "a.png"], "no folder given prunes visual tokens"),
    (lambda f, t: [f["image"], "--image", f["image"], "--out", t / "a.png"], "is not a folder"),
    (lambda f, t: [t / "missing", "--image", f["image"], "--out", t / "a.png"], "is not a folder"),
    (lambda f, t: [f["fastervlm"], "--image", t / "none.png", "--out", t / "a.png"], "does not exist"),
    (lambda f, t: [f["fastervlm"], "--image", f["image"], "--out", t / "a.jpg"], "not a .png file name"),
    (lambda f, t: [f["fastervlm"], "--image", f["image"], "--out", f["image"]], "would overwrite the input"),
    (lambda f, t: [f["sparse_fast"], "--prompt", "Hi", "--layer", 2, "--head", 0, "--out", t / "a.png"],
     "--layer 2 is out of range: "),
    (lambda f, t: [f["sparse_fast"], "--prompt", "Hi", "--layer", -1, "--head", 0, "--out", t / "a.png"],
     "--layer -1 is out of range"),
    (lambda f, t: [f["sparse_fast"], "--prompt", "Hi", "--layer", 0, "--head", 4, "--out", t / "a.png"],
     "--head 4 is out of range: layer 0 has 4 query heads (0-3)"),
    (lambda f, t: [f["fastervlm"], "--prompt", "Hi", "--layer", 0, "--head", 0, "--out", t / "a.png"],
     "has no block-sparse attention"),
    (lambda f, t: [f["sparse_fast"], "--layer", 0, "--head", 0, "--out", t / "a.png"], "need --prompt TEXT"),
    (lambda f, t: [f["sparse_fast"], "--prompt", "Hi", "--layer", 0, "--out", t / "a.png"], "go together"),
    (lambda f, t: [f["sparse_fast"], "--prompt", "Hi", "--layer", 0, "--head", 0, "--image", f["image"], "--out",
                   t / "a.png"], "drop them"),
])
def test_refusals_are_one_line(folders, tmp_path, capsys, args, message):
    code, _, err = _show(args(folders, tmp_path), capsys)
    assert code == 1 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "a.png").exists()
