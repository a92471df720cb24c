"""Calibration: data sources, fidelity metrics, threshold and budget searches and debias fits
(`edgeattn calibrate`)."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:  # the API without importing onnxruntime at package import
    if name in ("CalibrationOptions", "calibrate"):
        from edgeattn.calibrate import api

        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["CalibrationOptions", "calibrate"]
