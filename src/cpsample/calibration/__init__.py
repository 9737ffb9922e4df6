"""Calibration: search a guard's knobs for a model, in one call.

    result = Calibrator(GridSettings(classifier="runs/clf"), Goal(reduction=0.9)).fit()
    result.save("runs/calib")                 # the run record: calibration_run.json, CSVs, plots, cpsample.json
    result.save_pretrained("runs/clf")        # the choice as the classifier's calibration.json

`cpsample calibrate` is this call with its options parsed and its results printed.
"""

from importlib import import_module

# Each name is imported on first use, so the command line can read grid.py's defaults without loading diffusers.
_API = {
    "Calibrator": "cpsample.calibration.calibrator",
    "FitReport": "cpsample.calibration.calibrator",
    "Goal": "cpsample.calibration.goal",
    "RUN_RECORD": "cpsample.calibration.result",
    "CalibrationResult": "cpsample.calibration.result",
    "GridSettings": "cpsample.calibration.settings",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'cpsample.calibration' has no attribute {name!r}")
    return getattr(import_module(_API[name]), name)
