"""Calibration: search a guard's knobs for a model, in one call.

    result = Calibrator(GridSettings(classifier="runs/clf"), Goal(reduction=0.9)).fit()
    result.save("runs/calib")                 # the run record: calibration_run.json, CSVs, plots, cpsample.json
    result.save_pretrained("runs/clf")        # the choice as the classifier's calibration.json

`cpsample calibrate` is this call with its options parsed and its results printed.
"""

from cpsample import imported_on_first_use

# Each name is imported on first use, so the command line can read grid.py's defaults without loading diffusers.
_API = {
    "Calibrator": "cpsample.calibration.calibrator",
    "FitReport": "cpsample.calibration.report",
    "Goal": "cpsample.calibration.goal",
    "RUN_RECORD": "cpsample.calibration.result",
    "CalibrationResult": "cpsample.calibration.result",
    "GridSettings": "cpsample.calibration.settings",
}

__all__ = sorted(_API)


__getattr__ = imported_on_first_use(__name__, _API)
