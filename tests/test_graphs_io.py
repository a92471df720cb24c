"""load/save: external data stays external, writes are atomic, IR versions fit onnxruntime; API inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from edgeattn.errors import GraphError
from edgeattn.graphs import as_model, find_sites, load, rewrite, rewrite_file, save
from edgeattn.graphs.io import MAX_IR_VERSION

from graphs_golden import RTOL_FLOAT32, Dialect, build, parity


def _external_model(tmp_path: Path) -> Path:
    golden = build(Dialect(layers=2, constants="initializer"))
    projection = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)  # 2 KiB: stored externally
    golden.model.graph.initializer.append(onnx.numpy_helper.from_array(projection, "projection"))
    golden.model.graph.node.append(onnx.helper.make_node("MatMul", ["y", "projection"], ["y_out"]))
    del golden.model.graph.output[:]
    golden.model.graph.output.append(onnx.helper.make_tensor_value_info("y_out", onnx.TensorProto.FLOAT, None))
    path = tmp_path / "source" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(golden.model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    return path


def test_external_data_stays_external(tmp_path: Path) -> None:
    source = _external_model(tmp_path)
    out = tmp_path / "out" / "model.onnx"
    report = rewrite_file(source, out)
    assert report.output == str(out) and len(report.rewritten) == 2
    assert (tmp_path / "out" / "model.onnx.data").is_file()
    proto = onnx.load(out, load_external_data=False)
    projection = next(t for t in proto.graph.initializer if t.name == "projection")
    assert projection.data_location == onnx.TensorProto.EXTERNAL
    onnx.checker.check_model(str(out), full_check=True)
    feeds = build(Dialect(layers=2)).feeds()
    assert parity(str(source), str(out), feeds) < RTOL_FLOAT32
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx", "model.onnx.data"]


def test_single_file_models_stay_single_files_and_external_ones_can_be_inlined(tmp_path: Path) -> None:
    single = tmp_path / "single.onnx"
    onnx.save_model(build(Dialect()).model, single)
    rewrite_file(single, tmp_path / "a.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "single.onnx"]
    source = _external_model(tmp_path)
    rewrite_file(source, tmp_path / "inline.onnx", external_data=False)
    assert not (tmp_path / "inline.onnx.data").exists()
    assert parity(str(source), str(tmp_path / "inline.onnx"), build(Dialect(layers=2)).feeds()) < RTOL_FLOAT32


def test_a_failed_write_leaves_the_old_file_and_no_temporary_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"old contents")

    def broken_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ir, "save", broken_save)
    with pytest.raises(GraphError, match="cannot write .*disk full"):
        save(ir.serde.deserialize_model(build(Dialect()).model), out)
    assert out.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_ir_version_fits_onnxruntime(tmp_path: Path) -> None:
    model = ir.serde.deserialize_model(build(Dialect()).model)
    model.ir_version = 14
    save(model, tmp_path / "m.onnx")
    assert onnx.load(tmp_path / "m.onnx").ir_version == MAX_IR_VERSION
    assert model.ir_version == 14  # the in-memory model is not changed by saving
    rewritten, _ = rewrite(build(Dialect()).model)
    assert rewritten.ir_version >= 10  # overloads and node metadata need IR version 10
    newest = build(Dialect()).model
    newest.ir_version = 14
    assert rewrite(newest)[0].ir_version == MAX_IR_VERSION


def test_unreadable_inputs_are_graph_errors(tmp_path: Path) -> None:
    with pytest.raises(GraphError, match="no such file"):
        load(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model at all" * 10)
    with pytest.raises(GraphError, match="cannot read .* as ONNX"):
        load(junk)


def test_the_api_takes_paths_protos_and_models(tmp_path: Path) -> None:
    proto = build(Dialect()).model
    path = tmp_path / "m.onnx"
    onnx.save_model(proto, path)
    model = ir.serde.deserialize_model(proto)
    assert as_model(model) is model
    for given in (proto, path, str(path), model):
        assert len(find_sites(as_model(given)).sites) == 1
        rewritten, report = rewrite(given)
        assert len(report.rewritten) == 1 and isinstance(rewritten, ir.Model)
