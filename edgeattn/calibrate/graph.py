"""The decoder calibration runs, and the decoder it writes.

Calibration graph: every attention site of the folder's decoder becomes the method's op (its fixed
parameters from --method) with the tunable read from a graph input of its own,
`calibrate.<layer>.<tunable>` (float32; int64 for the window), and its statistics output
(`statistics.<layer>.skip_ratio` or `.density`) exposed; the nodes keep their exact function bodies.
One onnxruntime session serves the whole sweep: a candidate is a feed, never a rebuild.

Written graph: the same rewrite from the folder's decoder with the chosen values as attributes, lowered
for onnxruntime as `export --sparse` lowers (`fold_values`). A BLASST length law (scale_factor = c·Lkv^p
per layer) is written as a few standard nodes that compute the node's scale_factor input from the
length of its keys (`write_length_law`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx_ir as ir

from edgeattn.calibrate.goals import CalibrationError, Method
from edgeattn.calibrate.data import Window
from edgeattn.errors import EdgeAttnError
from edgeattn.graphs.detect import LAYER_TAG, LOWERED_TAG, SITE_TAG
from edgeattn.manifest import Manifest
from edgeattn.ops.registry import default_registry
from edgeattn.ops.spec import DOMAIN

CALIBRATION_TAG = "edgeattn.calibration"  # node metadata: the calibrated values (inspect shows them)


def decoder_path(folder: Path, manifest: Manifest) -> Path:
    """The decoder of an exported folder, refused in one line when calibration cannot rewrite it."""
    if manifest.decoder is None or "decoder" not in manifest.components:
        raise CalibrationError(f"{folder} is a {manifest.family} export without a decoder; blasst, block and "
                               "window calibrate a decoder's attention")
    if manifest.dtype != "fp32":
        raise CalibrationError(f"{folder} is a {manifest.dtype} export; calibrate reads fp32 exports "
                               "(export without --dtype, calibrate, then convert)")
    path = folder / manifest.file_of("decoder")
    from edgeattn.graphs import load

    model = load(path)
    if any(LOWERED_TAG in node.metadata_props for node in model.graph):
        flags = " ".join((manifest.sparse or {}).get("flags", [])) or "a fast lowering"
        raise CalibrationError(f"the decoder of {folder} is lowered for onnxruntime ({flags}): its attention "
                               "sites are gone; calibrate the folder `edgeattn export` wrote without --sparse")
    return path


def site_label(node: ir.Node) -> str:
    return node.metadata_props.get(LAYER_TAG) or node.metadata_props.get(SITE_TAG) or node.name or "?"


def method_nodes(model: ir.Model, method: Method) -> list[ir.Node]:
    return [n for n in model.graph if n.domain == DOMAIN and n.op_type == method.entry["op"]]


def build_calibration_model(path: Path, method: Method) -> tuple[ir.Model, list[str]]:
    """The decoder with the method's op at every site, one tunable input and one statistics output per
    site (see the module docstring); returns the model and the site labels in graph order."""
    shared = f"calibrate.{method.tunable}"
    entry = {**method.entry, "inputs": {method.tunable: shared}}
    model = _sparsify(path, {"site": [entry]}, statistics=True, lowering="function")
    nodes = method_nodes(model, method)
    if not nodes:
        raise CalibrationError(f"{path} has no attention site that {method.name} can use; calibrate needs a "
                               "decoder with attention")
    spec = default_registry().get(method.entry["op"])
    index = spec.tunable_input_index(method.tunable)
    old = next(v for v in model.graph.inputs if v.name == shared)
    labels = []
    for node in nodes:
        label = site_label(node)
        value = ir.val(f"calibrate.{label}.{method.tunable}", old.dtype, ir.Shape([]))
        model.graph.inputs.append(value)
        node.replace_input_with(index, value)
        labels.append(label)
    model.graph.inputs.remove(old)
    if len(set(labels)) != len(labels):
        raise CalibrationError(f"{path}: several attention sites share a layer number; calibrate needs one per layer")
    return model, labels


def _sparsify(path: Path, recipe: Mapping[str, Any], *, statistics: bool, lowering: str) -> ir.Model:
    from edgeattn.graphs.sparse.api import sparsify

    try:
        model, _ = sparsify(path, (), dict(recipe), component="decoder", statistics=statistics,
                            lowering=lowering)  # type: ignore[arg-type]
    except EdgeAttnError as err:
        raise CalibrationError(f"cannot rewrite {path} for calibration: {err}") from None
    return model


class CalibrationRunner:
    """The embed session and the calibration decoder session of a folder; `run` feeds one window and
    one value per site, and returns the logits and each site's statistic."""

    def __init__(self, folder: Path, manifest: Manifest, method: Method, threads: int | None = None) -> None:
        from edgeattn.graphs import save
        from edgeattn.graphs.session import session_from_onnx

        self.method, self.manifest = method, manifest
        model, self.labels = build_calibration_model(decoder_path(folder, manifest), method)
        with tempfile.TemporaryDirectory(prefix="edgeattn-calibrate-") as work:
            graph = save(model, Path(work) / "decoder_calibration.onnx")
            del model
            self.decoder = session_from_onnx(graph, threads=threads)
        self.embed = session_from_onnx(folder / manifest.file_of("embed"), threads=threads)
        self.past = [i.name for i in self.decoder.get_inputs() if i.name.startswith("past_key_values.")]
        self.outputs = ["logits", *(f"statistics.{label}.{method.statistic}" for label in self.labels)]
        self._embeds: dict[tuple[int, int], np.ndarray] = {}
        self.feed_type = np.int64 if _tunable_kind(method) == "int" else np.float32

    def run(self, window: Window, values: Mapping[str, float]) -> tuple[np.ndarray, dict[str, float]]:
        g = self.manifest.decoder
        assert g is not None
        key = (window.start, window.length)
        if key not in self._embeds:
            self._embeds[key] = self.embed.run(None, {"input_ids": window.ids[None]})[0]
        length = window.length
        feeds: dict[str, np.ndarray] = {
            "inputs_embeds": self._embeds[key], "attention_mask": np.ones((1, length), np.int64),
            "position_ids": np.arange(length, dtype=np.int64)[None],
            **{name: np.zeros((1, g.num_kv_heads, 0, g.head_size), np.float32) for name in self.past},
            **{f"calibrate.{label}.{self.method.tunable}": np.asarray(values[label], self.feed_type)
               for label in self.labels},
        }
        logits, *stats = self.decoder.run(self.outputs, feeds)
        if not np.isfinite(logits).all():
            raise CalibrationError(f"the decoder's logits hold NaN or infinity on a {length}-token window "
                                   f"(at {self.method.tunable} = {dict(values)}); nothing was written")
        return logits[0], {label: float(s) for label, s in zip(self.labels, stats)}


def fold_values(path: Path, method: Method, values: Mapping[str, float],
                laws: Mapping[str, tuple[float, float]] | None = None) -> ir.Model:
    """The written decoder: the method's op at every site with its chosen value as an attribute, lowered
    for onnxruntime (fast). With `laws` (BLASST), each node computes its scale_factor from the key length."""
    entries = []
    for label, value in values.items():
        entry = {**method.entry, ("layers" if label.isdigit() else "name"): label}
        if laws and label in laws:
            entry["inputs"] = {method.tunable: f"calibrate.{label}.{method.tunable}"}
        else:
            entry[method.tunable] = tunable_value(method, value)
        entries.append(entry)
    model = _sparsify(path, {"site": entries}, statistics=False, lowering="fast")
    for node in method_nodes(model, method):
        label = site_label(node)
        record: dict[str, Any] = {method.tunable: tunable_value(method, values[label])}
        if laws and label in laws:
            c, p = laws[label]
            write_length_law(model, node, method, label, c, p)
            record["law"] = {"c": c, "p": p, "formula": f"{method.tunable} = c * Lkv ** p"}
        node.metadata_props[CALIBRATION_TAG] = json.dumps(record)
    return model


def tunable_value(method: Method, value: float) -> int | float:
    """A chosen value in its attribute's kind: an int (the window) or a float."""
    return int(round(value)) if _tunable_kind(method) == "int" else float(value)


def _tunable_kind(method: Method) -> str:
    return default_registry().get(method.entry["op"]).attribute(method.tunable).kind


def write_length_law(model: ir.Model, node: ir.Node, method: Method, label: str, c: float, p: float) -> None:
    """Replace the node's tunable graph input by c·Lkv^p, Lkv the key length of this call (dim -2 of K
    in both the 4-D [B, H, S, d] and 3-D [B, S, H·d] layouts)."""
    graph = model.graph
    spec = default_registry().get(method.entry["op"])
    index = spec.tunable_input_index(method.tunable)
    old = node.inputs[index]
    key = node.inputs[1]
    assert old is not None and key is not None
    opset = model.opset_imports.get("", 23)

    def const(name: str, array: np.ndarray) -> ir.Value:
        value = ir.Value(name=f"calibrate.{label}.{name}", const_value=ir.tensor(array, name=f"calibrate.{label}.{name}"))
        graph.initializers.add(value)
        return value

    nodes = [ir.node("Shape", [key], attributes={"start": -2, "end": -1}, version=opset)]
    nodes.append(ir.node("Cast", [nodes[-1].outputs[0]], attributes={"to": ir.DataType.FLOAT}, version=opset))
    nodes.append(ir.node("Pow", [nodes[-1].outputs[0], const("law_p", np.asarray(p, np.float32))], version=opset))
    nodes.append(ir.node("Mul", [nodes[-1].outputs[0], const("law_c", np.asarray(c, np.float32))], version=opset))
    nodes.append(ir.node("Reshape", [nodes[-1].outputs[0], const("scalar", np.zeros(0, np.int64))], version=opset))
    out = nodes[-1].outputs[0]
    out.name, out.dtype, out.shape = f"calibrate.{label}.{method.tunable}.value", ir.DataType.FLOAT, ir.Shape([])
    for i, new in enumerate(nodes):
        new.name = f"calibrate.{label}.law.{i}"
    graph.insert_before(node, nodes)
    node.replace_input_with(index, out)
    if not old.uses():
        graph.inputs.remove(old)


def calibrated_sites(model: ir.Model) -> list[dict[str, Any]]:
    """The calibrated values the nodes carry (`inspect` shows them): one entry per node with the tag;
    lowered sites carry their values in their attributes (`lowered_sites`)."""
    return [{"node": node.name, "layer": node.metadata_props.get(LAYER_TAG), "op": node.op_type,
             **json.loads(node.metadata_props[CALIBRATION_TAG])}
            for node in model.graph if CALIBRATION_TAG in node.metadata_props]


__all__ = ["CALIBRATION_TAG", "calibrated_sites", "CalibrationRunner", "build_calibration_model", "decoder_path", "fold_values",
           "site_label", "tunable_value", "write_length_law"]
