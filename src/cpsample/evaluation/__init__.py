"""Evaluation: how much samples copy the training images, how good they are, and a report of both.

`evaluate(samples, members, nonmembers)` runs everything for named sample sets; `write_report(folder, results)`
writes report.json / report.md / report.html. The pieces are usable on their own; `Judge` (measures.py) turns one
sample result into one row of measures (near-copies with their interval, FD, guided share ...), as calibrate, the demo
and the benchmarks use it.
"""

from cpsample.evaluation.detector import NearCopyDetector
from cpsample.evaluation.feature_net import (
    BUNDLED_FEATURE_NET,
    BUNDLED_FEATURE_NETS,
    DigitNet,
    FeatureNet,
    FeatureNetConfig,
    FeatureNetTraining,
    bundled_feature_net,
    load_feature_net,
    train_feature_net,
)
from cpsample.evaluation.features import (
    DinoFeatures,
    FeatureExtractor,
    PixelFeatures,
    SSCDFeatures,
    make_feature_extractor,
)
from cpsample.evaluation.figures import most_similar_pairs, pairs_figure, similarity_histogram
from cpsample.evaluation.measures import MEASURES, Judge, Measure, Reference, Samples
from cpsample.evaluation.nearcopy import (
    NEAR_COPY_THRESHOLDS,
    NearCopies,
    default_threshold,
    feature_space,
    find_near_copies,
    resolve_threshold,
)
from cpsample.evaluation.neighbours import Neighbours, l2_normalise, nearest_by_cosine, nearest_by_l2
from cpsample.evaluation.permutation import permutation_test
from cpsample.evaluation.quality import (
    class_agreement,
    class_histogram,
    frechet_distance,
    frechet_distance_from_fits,
    frechet_distance_in,
    gaussian_fit,
    inception_fid,
)
from cpsample.evaluation.replication import (
    CARLINI_ALPHA,
    CARLINI_NEIGHBOURS,
    PAPER_THRESHOLDS,
    clopper_pearson,
    compare_shares,
    relative_distance,
    relative_share,
    replication_share,
    similarity_summary,
    tiled_l2,
)
from cpsample.evaluation.report import write_report
from cpsample.evaluation.suite import evaluate, make_figures

__all__ = [
    "BUNDLED_FEATURE_NET",
    "BUNDLED_FEATURE_NETS",
    "MEASURES",
    "NEAR_COPY_THRESHOLDS",
    "NearCopies",
    "NearCopyDetector",
    "CARLINI_ALPHA",
    "CARLINI_NEIGHBOURS",
    "DigitNet",
    "DinoFeatures",
    "FeatureExtractor",
    "FeatureNet",
    "FeatureNetConfig",
    "FeatureNetTraining",
    "Judge",
    "Measure",
    "Neighbours",
    "PAPER_THRESHOLDS",
    "PixelFeatures",
    "Reference",
    "Samples",
    "SSCDFeatures",
    "bundled_feature_net",
    "class_agreement",
    "class_histogram",
    "clopper_pearson",
    "compare_shares",
    "default_threshold",
    "evaluate",
    "feature_space",
    "find_near_copies",
    "frechet_distance",
    "frechet_distance_from_fits",
    "frechet_distance_in",
    "gaussian_fit",
    "inception_fid",
    "l2_normalise",
    "load_feature_net",
    "make_feature_extractor",
    "make_figures",
    "most_similar_pairs",
    "nearest_by_cosine",
    "nearest_by_l2",
    "pairs_figure",
    "permutation_test",
    "relative_distance",
    "relative_share",
    "replication_share",
    "resolve_threshold",
    "similarity_histogram",
    "similarity_summary",
    "tiled_l2",
    "train_feature_net",
    "write_report",
]
