"""Calibration: search a guard's knobs for a model, in one call.

    result = Calibrator(GridSettings(classifier="runs/clf"), Goal(reduction=0.9)).fit()
    result.save("runs/calib")                 # the run record: calibration_run.json, CSVs, plots, cpsample.json
    result.save_pretrained("runs/clf")        # the choice as the classifier's calibration.json

`cpsample calibrate` is this call with its options parsed and its results printed.
"""

from cpsample.calibration.calibrator import Calibrator, FitReport
from cpsample.calibration.goal import Goal
from cpsample.calibration.result import RUN_RECORD, CalibrationResult
from cpsample.calibration.search import GridSettings

__all__ = ["Calibrator", "CalibrationResult", "FitReport", "Goal", "GridSettings", "RUN_RECORD"]
