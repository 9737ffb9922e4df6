"""Data: loading image sets and fixing member / non-member splits."""

from cpsample.data.images import DataError, ImageSet, resize, to_uint8, to_unit_range
from cpsample.data.sources import BUNDLED, load_dataset
from cpsample.data.split import Split, make_split

__all__ = [
    "BUNDLED",
    "DataError",
    "ImageSet",
    "Split",
    "load_dataset",
    "make_split",
    "resize",
    "to_uint8",
    "to_unit_range",
]
