"""The compact wire form of a window (sketch version 2) and the rounding the agent applies.

A `WindowSketch` on the wire used to be its plain JSON (``"version": 1``, long keys, every
bin spelled out, floats at full precision): 5.2 kB for a window of 10,000 rows of a
16-input classifier (``tests/benchmarks/drift_bytes.py``). The compact form carries the
same summary in about half of that (2.6 kB, rounded as `quantize` rounds):

``{"v": 2, "p": profile_id, "n": rows, "l": labelled, "i": {name: F}, "o": {name: F},
"c": {"m": confusion, "p": positives, "n": negatives}, "r": regression}``

- a numeric feature ``F`` is an array ``[runs, mean, m2, min, max, missing, infinite]``;
  the trailing ``missing`` and ``infinite`` (values counted in the outer bins but not in
  the moments: ±inf) are left out when 0, so ``count = sum(counts) - infinite``;
- a categorical feature is an object ``{"k": runs, "m": missing}`` (``m`` left out when 0);
- ``runs`` is a list of bin counts where a negative number ``-k`` stands for ``k``
  consecutive empty bins; a matrix (confusion, score histograms) is a list of runs;
- ``l``, ``o``, ``c`` and ``r`` are left out when 0, empty or absent; bin edges and
  categories are never sent: they are the profile's (``p``).

Invariants:
- `to_compact` and `from_compact` are exact inverses: every integer and every float
  crosses unchanged (floats are written in their shortest round-trip form), so the fleet
  merges decoded compact windows exactly as it merges the same windows sent in version 1,
  and scores them identically. The bytes saved on floats come from `quantize`, which
  the agent applies before encoding, not from the encoding;
- a compact sketch is bounded like a version-1 one (`edgefleet.shared.drift.bounds`), and
  more: a zero run may not take a feature past `MAX_BINS`, nor all runs of one sketch past
  `MAX_SKETCH_BINS` (so a small payload cannot expand into a huge one), a confusion matrix
  is square and the score histograms come in pairs of equal length.

Why runs and not sparse ``[index, count]`` pairs: a window's bins are dense (quantile bins
hold about the same share each); runs cost one number per gap, pairs two per non-empty bin.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Discriminator,
    Field,
    GetJsonSchemaHandler,
    PlainSerializer,
    Tag,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from edgefleet.shared.drift.bounds import MAX_BINS, MAX_CLASSES, MAX_COUNT, MAX_FEATURES, Count
from edgefleet.shared.drift.profile import NumericFeature, ReferenceProfile
from edgefleet.shared.drift.window import (
    CategoricalCounts,
    ClassificationCounts,
    FeatureName,
    NumericCounts,
    RegressionCounts,
    WindowModel,
    WindowSketch,
)
from edgefleet.shared.replace import replace

COMPACT_VERSION = 2
# All bins one compact sketch may expand to: 2**20, twice the integers a version-1 sketch
# can spell out within the ingester's 1 MiB payload limit (two bytes each at least).
MAX_SKETCH_BINS = 1 << 20

# --- rounding (agent side) ---------------------------------------------------------------

# mean, min and max are rounded to a power of ten at most 1/1000 of the reference's
# standard deviation. No statistic reads the window's mean (it is shown beside the
# reference mean, in units of that deviation), and min/max only place the mass of the
# under/overflow bin for the binned Wasserstein distance, so W1 / std moves by at most
# half a quantum times that mass: below 5e-4, against an alert threshold of 0.1.
MEAN_QUANTUM_OF_STD = 1e-3
# m2 (and the regression error sums) keep 5 significant digits: m2 only gives the
# window's own standard deviation (relative error <= 2.5e-5), never a drift statistic.
M2_DIGITS = 5
# Without a reference spread (a constant reference feature) keep 7 significant digits.
FALLBACK_DIGITS = 7


def _significant(x: float, digits: int) -> float:
    rounded = float(f"{x:.{digits}g}")
    return rounded if math.isfinite(rounded) else x


def _to_quantum(x: float | None, std: float) -> float | None:
    if x is None:
        return None
    if not (std > 0 and math.isfinite(std)):
        return _significant(x, FALLBACK_DIGITS)
    rounded = round(x, -math.floor(math.log10(std * MEAN_QUANTUM_OF_STD)))
    return rounded if math.isfinite(rounded) else x


def _quantize_numeric(counts: NumericCounts, std: float) -> NumericCounts:
    # One quantum for mean, min and max keeps min <= mean <= max (rounding is monotone).
    return replace(
        counts,
        mean=_to_quantum(counts.mean, std),
        m2=_significant(counts.m2, M2_DIGITS),
        min=_to_quantum(counts.min, std),
        max=_to_quantum(counts.max, std),
    )


def quantize(sketch: WindowSketch, profile: ReferenceProfile) -> WindowSketch:
    """``sketch`` with its floats rounded to what the fleet's statistics need (see above).

    Counts are untouched, so every count-based statistic (PSI, Jensen-Shannon, KS,
    chi-square, label metrics) is the same before and after. Idempotent. Features the
    profile does not know keep 7 significant digits.
    """
    stds = {
        (role, f.name): f.std
        for role, features in (("inputs", profile.inputs), ("outputs", profile.outputs))
        for f in features
        if isinstance(f, NumericFeature)
    }

    def role(name: str, features: dict[str, NumericCounts | CategoricalCounts]) -> dict[str, Any]:
        return {
            feature: _quantize_numeric(c, stds.get((name, feature), 0.0))
            if isinstance(c, NumericCounts)
            else c
            for feature, c in features.items()
        }

    regression = sketch.regression
    if regression is not None:
        regression = replace(
            regression,
            error_sum=_significant(regression.error_sum, M2_DIGITS),
            abs_error_sum=_significant(regression.abs_error_sum, M2_DIGITS),
            squared_error_sum=_significant(regression.squared_error_sum, M2_DIGITS),
        )
    return replace(
        sketch,
        inputs=role("inputs", sketch.inputs),
        outputs=role("outputs", sketch.outputs),
        regression=regression,
    )


# --- runs --------------------------------------------------------------------------------


def encode_runs(counts: Iterable[int]) -> list[int]:
    """Bin counts with every run of two or more empty bins as ``-length``."""
    out: list[int] = []
    zeros = 0
    for c in counts:
        if c == 0:
            zeros += 1
            continue
        if zeros:
            out.append(0 if zeros == 1 else -zeros)
            zeros = 0
        out.append(c)
    if zeros:
        out.append(0 if zeros == 1 else -zeros)
    return out


def runs_length(runs: Sequence[int]) -> int:
    """How many bins ``runs`` expands to (without expanding it)."""
    return sum(-r if r < 0 else 1 for r in runs)


def decode_runs(runs: Sequence[int]) -> list[int]:
    """The bin counts ``runs`` stands for (callers bound `runs_length` first)."""
    out: list[int] = []
    for r in runs:
        if r < 0:
            out.extend([0] * -r)
        else:
            out.append(r)
    return out


def _runs_fit(runs: list[int]) -> list[int]:
    length = runs_length(runs)
    if length > MAX_BINS:
        raise ValueError(f"runs expand to {length} bins, more than the {MAX_BINS} a feature has")
    return runs


Runs = Annotated[
    list[Annotated[int, Field(ge=-MAX_BINS, le=MAX_COUNT)]],
    Field(
        max_length=MAX_BINS,
        description="bin counts; a negative -k stands for k empty bins",
    ),
    AfterValidator(_runs_fit),
    # Canonical on the way out, whether the value holds counts or runs as received.
    PlainSerializer(lambda runs: encode_runs(decode_runs(runs))),
]
RunsMatrix = Annotated[list[Runs], Field(max_length=MAX_CLASSES + 1)]


def _number(x: float) -> float | int:
    # 46269000.0 travels as 46269000: two bytes fewer, and it parses back to the same float.
    return int(x) if x.is_integer() and abs(x) < 2**53 else x


# --- the compact models --------------------------------------------------------------------

_NUMERIC_FIELDS = ("counts", "mean", "m2", "min", "max", "missing", "infinite")


class CompactNumeric(WindowModel):
    """A numeric feature: ``[runs, mean, m2, min, max, missing?, infinite?]`` on the wire."""

    counts: Runs
    mean: float
    m2: float = Field(ge=0)
    min: float | None
    max: float | None
    missing: Count = 0
    infinite: Count = Field(default=0, description="±inf values: binned, not in the moments")

    @model_validator(mode="before")
    @classmethod
    def _from_array(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            if not 5 <= len(value) <= len(_NUMERIC_FIELDS):
                raise ValueError(
                    "a numeric feature is [runs, mean, m2, min, max, missing?, infinite?], "
                    f"got {len(value)} items"
                )
            return dict(zip(_NUMERIC_FIELDS, value, strict=False))
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CompactNumeric:
        present = sum(r for r in self.counts if r > 0)
        if self.infinite > present:
            raise ValueError(f"{self.infinite} infinite values but only {present} binned")
        if (self.min is None) != (self.max is None):
            raise ValueError("min and max are both null (no finite value) or both numbers")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    @model_serializer(mode="plain")
    def _to_array(self) -> list[Any]:
        items: list[Any] = [
            encode_runs(decode_runs(self.counts)),
            _number(self.mean),
            _number(self.m2),
            None if self.min is None else _number(self.min),
            None if self.max is None else _number(self.max),
            self.missing,
            self.infinite,
        ]
        while len(items) > 5 and items[-1] == 0:
            items.pop()
        return items

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        number = {"type": "number"}
        nullable = {"anyOf": [number, {"type": "null"}]}
        count = {"type": "integer", "minimum": 0, "maximum": MAX_COUNT}
        runs = {
            "type": "array",
            "maxItems": MAX_BINS,
            "items": {"type": "integer", "minimum": -MAX_BINS, "maximum": MAX_COUNT},
            "description": "bin counts, underflow first, overflow last; -k = k empty bins",
        }
        return {
            "title": "CompactNumeric",
            "description": "[runs, mean, m2, min, max, missing, infinite]; the last two "
            "left out when 0; min/max null when no value was finite",
            "type": "array",
            "prefixItems": [
                runs,
                number,
                {"type": "number", "minimum": 0},
                nullable,
                nullable,
                count,
                count,
            ],
            "minItems": 5,
            "maxItems": len(_NUMERIC_FIELDS),
        }


class CompactCategorical(WindowModel):
    """A categorical feature: ``{"k": runs, "m": missing}``."""

    model_config = ConfigDict(populate_by_name=True)

    counts: Runs = Field(alias="k", description="per profile category, 'other' last")
    missing: Count = Field(default=0, alias="m")


def _feature_kind(value: object) -> str:
    if isinstance(value, list | tuple | CompactNumeric):
        return "numeric"
    return "categorical"


CompactFeature = Annotated[
    Annotated[CompactNumeric, Tag("numeric")] | Annotated[CompactCategorical, Tag("categorical")],
    Discriminator(_feature_kind),
]


class CompactClassification(WindowModel):
    """Confusion matrix and score histograms, each a list of runs."""

    model_config = ConfigDict(populate_by_name=True)

    confusion: RunsMatrix = Field(
        alias="m", description="confusion matrix [true][predicted], 'other' last; square"
    )
    positives: RunsMatrix = Field(
        alias="p", description="per class j, score-j bin counts of rows labelled j"
    )
    negatives: RunsMatrix = Field(
        alias="n", description="per class j, score-j bin counts of rows not labelled j"
    )

    @model_validator(mode="after")
    def _shapes(self) -> CompactClassification:
        k = len(self.confusion)
        for i, row in enumerate(self.confusion):
            if runs_length(row) != k:
                raise ValueError(f"confusion has {k} rows but row {i} has {runs_length(row)} bins")
        if len(self.positives) != len(self.negatives):
            raise ValueError(
                f"{len(self.positives)} positive score histograms, {len(self.negatives)} negative"
            )
        for j, (p, n) in enumerate(zip(self.positives, self.negatives, strict=True)):
            if runs_length(p) != runs_length(n):
                raise ValueError(
                    f"class {j}: {runs_length(p)} positive score bins, {runs_length(n)} negative"
                )
        return self


class CompactSketch(WindowModel):
    """A drift window (`WindowSketch`) in the compact wire form, sketch version 2.

    Short keys; ``l``, ``o``, ``c`` and ``r`` are left out when 0, empty or absent. Runs:
    a negative ``-k`` stands for ``k`` empty bins. Bin edges and categories are never
    sent: they are the reference profile's (``p``). At most 2**20 bins in all.
    """

    model_config = ConfigDict(populate_by_name=True)

    version: Literal[2] = Field(alias="v", description="sketch version: 2, compact")
    profile_id: str = Field(
        alias="p", max_length=128, description="profile_id of the profile whose bins these are"
    )
    count: Count = Field(alias="n", description="rows observed")
    inputs: dict[FeatureName, CompactFeature] = Field(
        alias="i", max_length=MAX_FEATURES, description="input features by name"
    )
    outputs: dict[FeatureName, CompactFeature] = Field(
        default_factory=dict,
        alias="o",
        max_length=MAX_FEATURES,
        description="output features by name",
    )
    labelled: Count = Field(default=0, alias="l", description="predictions joined with a label")
    classification: CompactClassification | None = Field(
        default=None, alias="c", description="labelled predictions of a classifier"
    )
    regression: RegressionCounts | None = Field(
        default=None, alias="r", description="labelled predictions of a regressor"
    )

    @model_validator(mode="after")
    def _bounded_expansion(self) -> CompactSketch:
        lists: list[list[int]] = [f.counts for f in [*self.inputs.values(), *self.outputs.values()]]
        if self.classification is not None:
            c = self.classification
            lists += [*c.confusion, *c.positives, *c.negatives]
        total = sum(runs_length(r) for r in lists)
        if total > MAX_SKETCH_BINS:
            raise ValueError(f"runs expand to {total} bins, more than {MAX_SKETCH_BINS}")
        return self


def _compact_feature(c: NumericCounts | CategoricalCounts) -> CompactNumeric | CompactCategorical:
    if isinstance(c, NumericCounts):
        return CompactNumeric(
            counts=c.counts,
            mean=c.mean,
            m2=c.m2,
            min=c.min,
            max=c.max,
            missing=c.missing,
            infinite=sum(c.counts) - c.count,
        )
    return CompactCategorical(counts=c.counts, missing=c.missing)


def to_compact(sketch: WindowSketch) -> CompactSketch:
    """The compact form of ``sketch``; `from_compact` gives ``sketch`` back exactly.

    Raises `ValueError` for a sketch whose ``count`` exceeds its binned values (which
    no accumulator makes).
    """
    classification = None
    if sketch.classification is not None:
        c = sketch.classification
        classification = CompactClassification(
            confusion=c.confusion, positives=c.positives, negatives=c.negatives
        )
    try:
        return CompactSketch(
            version=COMPACT_VERSION,
            profile_id=sketch.profile_id,
            count=sketch.count,
            inputs={n: _compact_feature(c) for n, c in sketch.inputs.items()},
            outputs={n: _compact_feature(c) for n, c in sketch.outputs.items()},
            labelled=sketch.labelled,
            classification=classification,
            regression=sketch.regression,
        )
    except ValidationError as e:
        raise ValueError(f"sketch has no compact form: {describe(e)}") from e


def _window_feature(c: CompactNumeric | CompactCategorical) -> NumericCounts | CategoricalCounts:
    counts = decode_runs(c.counts)
    if isinstance(c, CompactNumeric):
        return NumericCounts(
            counts=counts,
            count=sum(counts) - c.infinite,
            mean=c.mean,
            m2=c.m2,
            min=c.min,
            max=c.max,
            missing=c.missing,
        )
    return CategoricalCounts(counts=counts, missing=c.missing)


def from_compact(compact: CompactSketch) -> WindowSketch:
    """The `WindowSketch` ``compact`` stands for.

    Raises `pydantic.ValidationError` if the expanded sketch leaves a version-1 bound
    (a count past 2**63 - 1).
    """
    classification = None
    if compact.classification is not None:
        c = compact.classification
        classification = ClassificationCounts(
            confusion=[decode_runs(r) for r in c.confusion],
            positives=[decode_runs(r) for r in c.positives],
            negatives=[decode_runs(r) for r in c.negatives],
        )
    return WindowSketch(
        profile_id=compact.profile_id,
        count=compact.count,
        inputs={n: _window_feature(c) for n, c in compact.inputs.items()},
        outputs={n: _window_feature(c) for n, c in compact.outputs.items()},
        labelled=compact.labelled,
        classification=classification,
        regression=compact.regression,
    )


def describe(error: ValidationError) -> str:
    """The first few errors of ``error`` as ``where: what`` (payload paths, not Python's)."""
    parts = []
    for item in error.errors()[:3]:
        where = ".".join(str(p) for p in item["loc"]) or "sketch"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def sketch_to_wire(sketch: WindowSketch | None) -> dict[str, Any] | None:
    """The ``sketch`` field as an agent sends it: compact, or version 1 if it has no
    compact form (a hand-made sketch whose ``count`` exceeds its bins); never raises."""
    if sketch is None:
        return None
    try:
        compact = to_compact(sketch)
    except ValueError:
        return sketch.model_dump(mode="json")
    dumped: dict[str, Any] = compact.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return dumped


def parse_wire_sketch(value: object) -> object:
    """A received ``sketch`` field: a compact (``"v": 2``) one becomes a `WindowSketch`.

    Anything else (a version-1 sketch from an older agent, None) is returned as it is
    for the usual validation. Raises `ValueError` naming the part of a compact sketch
    that is out of bounds or inconsistent.
    """
    if not (isinstance(value, dict) and "v" in value):
        return value
    try:
        return from_compact(CompactSketch.model_validate(value))
    except ValidationError as e:
        raise ValueError(f"compact sketch: {describe(e)}") from e
