"""Calibration: data sources, fidelity metrics, threshold and budget searches."""
