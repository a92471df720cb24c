"""Export and validation wall time per family and model, with the validation errors.

    python benchmarks/export.py [--models demo:tiny-llama,zoo:smollm2-135m,...]

Writes benchmarks/results/export.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, run_benchmark, write_json  # noqa: E402

DEFAULT = "demo:tiny-llama,demo:tiny-vit,demo:tiny-llava,zoo:minilm-l6,zoo:dinov2-s14,zoo:smollm2-135m"


def bench(model: str) -> list[dict]:
    from edgeattn.exporter.api import export_model
    from edgeattn.exporter.sources import load_model

    start = time.perf_counter()
    loaded = load_model(model)
    load_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        manifest = export_model(loaded, Path(tmp) / "out").to_json()
    rows = []
    for name, comp in manifest["components"].items():
        records = manifest["validation"][name]
        worst_rel = max(o["max_rel"] for r in records for o in r["outputs"].values())
        worst_abs = max(o["max_abs"] for r in records for o in r["outputs"].values())
        rows.append(
            {
                "model": model,
                "family": manifest["family"],
                "component": name,
                "load_s": round(load_s, 2),
                "export_s": comp["export_seconds"],
                "validate_s": comp["validate_seconds"],
                "cases": len(records),
                "max_abs_error": worst_abs,
                "max_rel_error": worst_rel,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT)
    args = parser.parse_args()
    rows = [row for model in args.models.split(",") for row in bench(model)]
    path = write_json("export", {"machine": machine(), "rows": rows})
    print("| model | component | export (s) | validate (s) | shapes | max rel error |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['component']} | {r['export_s']:.1f} | {r['validate_s']:.1f} | {r['cases']} | {r['max_rel_error']:.1e} |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    run_benchmark(main)
