"""The bounds of every serialised drift document: profiles, thresholds and windows.

A profile and its thresholds arrive in model packages and over the fleet's REST API, a
window over MQTT from every device; each is parsed with these limits, so no document
can carry a non-finite number, a count beyond the database's 64-bit integers, or a list
longer than any real model needs. Pure constants and annotated types; no numpy.
"""

from __future__ import annotations

import sys
from typing import Annotated

from pydantic import Field

from edgefleet.shared.limits import MAX_INT64

MAX_COUNT = MAX_INT64  # the BIGINT columns counts land in
MAX_BINS = 10_000  # numeric bins or categories plus "other", per feature
MAX_FEATURES = 4096  # the widest profile a model package may carry (flattened tensors)
MAX_CLASSES = 1024
MAX_NAME_CHARS = 200  # feature, tensor, class and metric names
MAX_METRICS = 64  # baseline metrics and metric limits of one model
# The largest threshold of a statistic without an upper bound (PSI, normalised
# Wasserstein): far above any that means something, and finite.
MAX_STATISTIC = 1e6
_FLOAT_MAX = sys.float_info.max

Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Bins = Annotated[list[Count], Field(max_length=MAX_BINS)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
Finite = Annotated[float, Field(ge=-_FLOAT_MAX, le=_FLOAT_MAX, allow_inf_nan=False)]
Edges = Annotated[list[Finite], Field(min_length=2, max_length=MAX_BINS)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
PValue = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Statistic = Annotated[float, Field(ge=0, le=MAX_STATISTIC, allow_inf_nan=False)]
