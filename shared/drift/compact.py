"""The compact wire form of a window (sketch version 2) and the rounding the agent applies.

A `WindowSketch` on the wire used to be its plain JSON (``"version": 1``, long keys, every
bin spelled out, floats at full precision): 5.2 kB for a window of 10,000 rows of a
16-input classifier (``tests/benchmarks/drift_bytes.py``). The compact form carries the
same summary in 2.0 kB (rounded as `quantize` rounds), within issue 15's 2,048 B:

``{"v": 2, "h": digest, "n": rows, "l": labelled, "i": {name: F}, "o": {name: F},
"c": {"m": confusion, "p": positives, "n": negatives}, "r": regression}``

- ``h`` is the profile_id (a SHA-256 in lowercase hex) as its 32 bytes in url-safe base64,
  43 characters; a profile_id of any other shape goes as it is under ``p`` instead;
- a numeric feature ``F`` is an array ``[runs, mean, m2, min, max, missing, infinite]``;
  the trailing ``missing`` and ``infinite`` (values counted in the outer bins but not in
  the moments: ±inf) are left out when 0, so ``count = sum(counts) - infinite``;
- a categorical feature is an object ``{"k": runs, "m": missing}`` (``m`` left out when 0);
- ``runs`` is one string: the bin counts with every stretch of empty bins as one run,
  packed as url-safe base64 (no padding) of unsigned LEB128 varints, ``2c`` for a count
  ``c`` and ``2k + 1`` for ``k >= 1`` empty bins (`pack_runs`). A matrix (confusion, score
  histograms) is one such string with the varint 1 (a run of no bins) between its rows
  (`pack_matrix`);
- ``l``, ``o``, ``c`` and ``r`` are left out when 0, empty or absent; bin edges and
  categories are never sent: they are the profile's. Features go by name, not by
  position, so the fleet decodes a window without the profile.

Invariants:
- `to_compact` and `from_compact` are exact inverses: every integer and every float
  crosses unchanged (floats are written in their shortest round-trip form), so the fleet
  merges decoded compact windows exactly as it merges the same windows sent in version 1,
  and scores them identically. The bytes saved on floats come from `quantize`, which
  the agent applies before encoding, not from the encoding;
- a compact sketch is bounded like a version-1 one (`edgefleet.shared.drift.bounds`), and
  more: a packed string is at most `MAX_PACKED_CHARS` (a matrix `MAX_PACKED_MATRIX_CHARS`)
  of the url-safe alphabet, a varint at most 5 bytes and in its shortest form, the last
  one complete; runs may not take a feature (a matrix row) past `MAX_BINS`, checked while
  decoding, nor all runs of one sketch past `MAX_SKETCH_BINS` (so a small payload cannot
  expand into a huge one); a matrix has at most `MAX_MATRIX_ROWS` rows, a confusion matrix
  is square and the score histograms come in pairs of equal length. Each refusal names
  the field (``i.x.numeric.counts: ...``) and the reason;
- a bin count above `MAX_PACKED_COUNT` (2**34 - 1) has no 5-byte varint: such a sketch
  goes out in version 1, as does one whose ``count`` exceeds its bins (`sketch_to_wire`).

What each step saves, measured with the benchmark at 10,000 rows (envelope included):
plain JSON integer runs and 1/1000-std rounding gave 2,620 B; packing the runs (a
10,000-row bin is 2 bytes, 2.7 characters, instead of 5 characters and a comma) 2,149 B
(-471); each matrix as one string rather than a list of strings 2,127 B (-22); mean, min
and max to 1/100 std 2,067 B (-60) and m2 to 4 digits 2,063 B (-4: m2 is mostly a large
integer, no shorter with fewer digits); the profile_id as ``h`` 2,042 B (-21). Without
any one of the larger steps the report is over 2,048 B; m2's digit is kept for the
margin (6 B) since its bound costs nothing. Not taken: dropping the sketch's ``n``
because the envelope's ``count`` repeats it (the only field the envelope and the sketch
share; -10 B, but the sketch would no longer stand alone); the envelope's timestamps,
model and seq are not in the sketch, so nothing else repeats. zlib would give 1.3 kB,
but the wire stays JSON.

Why runs and not sparse ``[index, count]`` pairs: a window's bins are dense (quantile bins
hold about the same share each); runs cost one number per gap, pairs two per non-empty bin.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    GetJsonSchemaHandler,
    PlainSerializer,
    Tag,
    ValidationError,
    WithJsonSchema,
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

# mean, min and max are rounded to a power of ten at most 1/100 of the reference's
# standard deviation. No statistic reads the window's mean (it is shown beside the
# reference mean, in units of that deviation), and min/max only place the mass of the
# under/overflow bin for the binned Wasserstein distance, so W1 / std moves by at most
# half a quantum times that mass: below 5e-3, against an alert threshold of 0.1.
MEAN_QUANTUM_OF_STD = 1e-2
# m2 keeps 4 significant digits: it only gives the window's own standard deviation
# (relative error <= 2.5e-4), never a drift statistic.
M2_DIGITS = 4
# The regression error sums keep 5: they are the label metrics (mean error, MAE, RMSE).
ERROR_SUM_DIGITS = 5
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
            error_sum=_significant(regression.error_sum, ERROR_SUM_DIGITS),
            abs_error_sum=_significant(regression.abs_error_sum, ERROR_SUM_DIGITS),
            squared_error_sum=_significant(regression.squared_error_sum, ERROR_SUM_DIGITS),
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


# --- packed runs (the wire form of a list of runs) -------------------------------------------

# A varint carries 7 bits a byte; 5 bytes are 35 bits, one of them the tag: a bin may hold
# at most 2**34 - 1 values (1.7e10 rows in one bin of one window). A sketch with a larger
# count has no compact form and goes out in version 1 (`sketch_to_wire`).
MAX_VARINT_BYTES = 5
MAX_PACKED_COUNT = (1 << (7 * MAX_VARINT_BYTES - 1)) - 1
# A feature's runs expand to at most MAX_BINS bins, each varint to one bin at least: so at
# most MAX_BINS varints of MAX_VARINT_BYTES bytes, in base64 (4 characters per 3 bytes).
MAX_PACKED_CHARS = -(-MAX_BINS * MAX_VARINT_BYTES * 4 // 3)
# A matrix (rows of runs, varint 1 between rows): at most 1 MiB decoded, the ingester's
# payload limit; its rows are bounded one by one as it is decoded.
MAX_PACKED_MATRIX_CHARS = -(-(1 << 20) * 4 // 3)
MAX_MATRIX_ROWS = MAX_CLASSES + 1
ROW_END = 1  # the varint a run of 0 bins would be: between the rows of a matrix
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def _varint_bytes(runs: Sequence[int], out: bytearray) -> None:
    for r in runs:
        if r > MAX_PACKED_COUNT:
            raise ValueError(f"count {r} needs more than {MAX_VARINT_BYTES} varint bytes")
        v = 2 * -r + 1 if r < 0 else 2 * r
        while v >= 0x80:
            out.append(v & 0x7F | 0x80)
            v >>= 7
        out.append(v)


def _base64(raw: bytearray) -> str:
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode("ascii")


def pack_runs(runs: Sequence[int]) -> str:
    """``runs`` as url-safe base64 (no padding) of unsigned LEB128 varints.

    A count ``c`` is the varint ``2c``, a run of ``k`` empty bins (``-k``) is ``2k + 1``.
    Raises `ValueError` for a count above `MAX_PACKED_COUNT`.
    """
    out = bytearray()
    _varint_bytes(runs, out)
    return _base64(out)


def pack_matrix(rows: Sequence[Sequence[int]]) -> str:
    """Rows of runs as one `pack_runs` string, the varint `ROW_END` between rows.

    Raises `ValueError` for a count above `MAX_PACKED_COUNT`, or for a single empty row
    (its packed form, "", is that of no rows).
    """
    if len(rows) == 1 and not rows[0]:
        raise ValueError("a matrix of one empty row has no packed form")
    out = bytearray()
    for i, row in enumerate(rows):
        if i:
            out.append(ROW_END)
        _varint_bytes(row, out)
    return _base64(out)


def _unbase64(packed: str, limit: int) -> bytes:
    if len(packed) > limit:
        raise ValueError(f"packed runs of {len(packed)} characters, more than {limit}")
    if not _BASE64URL.fullmatch(packed) or len(packed) % 4 == 1:
        raise ValueError("packed runs are not url-safe base64 without padding")
    return base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4))


def _varints(raw: bytes) -> Iterator[tuple[int, int]]:
    """(value, offset of its last byte) of each varint in ``raw``; raises `ValueError`."""
    value = length = 0
    for at, byte in enumerate(raw):
        value |= (byte & 0x7F) << (7 * length)
        length += 1
        if byte & 0x80:
            if length == MAX_VARINT_BYTES:
                raise ValueError(f"varint at byte {at} is longer than {MAX_VARINT_BYTES} bytes")
            continue
        if length > 1 and byte == 0:
            raise ValueError(f"varint ending at byte {at} is not in its shortest form")
        yield value, at
        value = length = 0
    if length:
        raise ValueError("the last varint is truncated (its last byte says more follow)")


def _append(runs: list[int], value: int, bins: int) -> int:
    # The varint `value` onto ``runs``; returns the bins they expand to now.
    if value & 1:
        runs.append(-(value >> 1))
        bins += value >> 1
    else:
        runs.append(value >> 1)
        bins += 1
    if bins > MAX_BINS:
        raise ValueError(f"runs expand to {bins} bins, more than the {MAX_BINS} a feature has")
    return bins


def unpack_runs(packed: str) -> list[int]:
    """The runs `pack_runs` made ``packed`` from.

    Raises `ValueError` (saying which) for a string over `MAX_PACKED_CHARS`, anything but
    url-safe base64 without padding, a varint longer than `MAX_VARINT_BYTES` or not in its
    shortest form, a truncated last varint, a run of 0 bins, or runs expanding past
    `MAX_BINS` (checked as it goes: nothing is expanded).
    """
    runs: list[int] = []
    bins = 0
    for value, at in _varints(_unbase64(packed, MAX_PACKED_CHARS)):
        if value == ROW_END:
            raise ValueError(f"varint ending at byte {at} is a run of 0 empty bins")
        bins = _append(runs, value, bins)
    return runs


def unpack_matrix(packed: str) -> list[list[int]]:
    """The rows `pack_matrix` made ``packed`` from ("" is no rows).

    Raises `ValueError` as `unpack_runs` does (`MAX_BINS` applies to each row, the
    length limit is `MAX_PACKED_MATRIX_CHARS`), and for more than `MAX_MATRIX_ROWS` rows.
    """
    raw = _unbase64(packed, MAX_PACKED_MATRIX_CHARS)
    rows: list[list[int]] = [[]] if raw else []
    bins = 0
    for value, _ in _varints(raw):
        if value == ROW_END:
            if len(rows) == MAX_MATRIX_ROWS:
                raise ValueError(f"more than {MAX_MATRIX_ROWS} rows")
            rows.append([])
            bins = 0
            continue
        bins = _append(rows[-1], value, bins)
    return rows


_PACKED_RUNS_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_-]*$",
    "maxLength": MAX_PACKED_CHARS,
    "description": "bin counts, run-encoded: url-safe base64 (no padding) of unsigned "
    f"LEB128 varints of at most {MAX_VARINT_BYTES} bytes; 2c = a count c, 2k+1 = k empty "
    f"bins (k >= 1); at most {MAX_BINS} bins",
}
_PACKED_MATRIX_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_-]*$",
    "maxLength": MAX_PACKED_MATRIX_CHARS,
    "description": "rows of packed runs in one string, the varint 1 between rows; '' is "
    f"no rows; at most {MAX_MATRIX_ROWS} rows of at most {MAX_BINS} bins",
}


def _unpack(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError("runs are a string: url-safe base64 of varints")
    return unpack_runs(value)


def _unpack_matrix(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError("a matrix is a string: url-safe base64 of varints")
    return unpack_matrix(value)


def _canonical(runs: Sequence[int]) -> list[int]:
    return encode_runs(decode_runs(runs))


# On the wire a string; in the model the runs it stands for. The serializer writes the
# canonical form, whatever runs the value holds.
Runs = Annotated[
    list[int],
    BeforeValidator(_unpack),
    PlainSerializer(lambda runs: pack_runs(_canonical(runs))),
    WithJsonSchema(_PACKED_RUNS_SCHEMA),
]
RunsMatrix = Annotated[
    list[list[int]],
    BeforeValidator(_unpack_matrix),
    PlainSerializer(lambda rows: pack_matrix([_canonical(r) for r in rows])),
    WithJsonSchema(_PACKED_MATRIX_SCHEMA),
]


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
            pack_runs(encode_runs(decode_runs(self.counts))),
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
        runs = _PACKED_RUNS_SCHEMA
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
    """Confusion matrix and score histograms, each rows of runs (one packed string)."""

    model_config = ConfigDict(populate_by_name=True)

    confusion: RunsMatrix = Field(
        alias="m",
        description="confusion matrix [true][predicted], 'other' last; square; packed, "
        "the varint 1 between rows",
    )
    positives: RunsMatrix = Field(
        alias="p",
        description="per class j, score-j bin counts of rows labelled j; packed, the "
        "varint 1 between rows",
    )
    negatives: RunsMatrix = Field(
        alias="n",
        description="per class j, score-j bin counts of rows not labelled j; packed, the "
        "varint 1 between rows",
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


# A profile_id is the SHA-256 of the profile in hex (64 characters); on the wire it is
# its 32 bytes in url-safe base64 (43), under the key "h" instead of "p".
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_DIGEST_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_-]{43}$",
    "description": "profile_id when it is a SHA-256 in lowercase hex: its 32 bytes in "
    "url-safe base64 without padding; in place of p",
}


def id_to_digest(profile_id: str) -> str | None:
    """``profile_id`` as the "h" of the wire, or None if it is not 64 lowercase hex digits."""
    if not _HEX_DIGEST.fullmatch(profile_id):
        return None
    return base64.urlsafe_b64encode(bytes.fromhex(profile_id)).rstrip(b"=").decode("ascii")


def digest_to_id(digest: object) -> str:
    """The profile_id an "h" stands for. Raises `ValueError` if it is not 32 bytes in
    url-safe base64 without padding."""
    if not (isinstance(digest, str) and len(digest) == 43 and _BASE64URL.fullmatch(digest)):
        raise ValueError("h is not 32 bytes in url-safe base64 without padding (43 characters)")
    return base64.urlsafe_b64decode(digest + "=").hex()


def _digest_schema(schema: dict[str, Any]) -> None:
    schema["properties"]["h"] = _DIGEST_SCHEMA
    schema["required"].remove("p")
    schema["oneOf"] = [{"required": ["p"]}, {"required": ["h"]}]


class CompactSketch(WindowModel):
    """A drift window (`WindowSketch`) in the compact wire form, sketch version 2.

    Short keys; ``l``, ``o``, ``c`` and ``r`` are left out when 0, empty or absent; a
    SHA-256 profile_id arrives as ``h`` (its bytes in base64), any other as ``p``. Runs
    are packed strings (see the module docstring); in the model a negative ``-k`` stands
    for ``k`` empty bins. Bin edges and categories are never sent: they are the reference
    profile's. At most 2**20 bins in all.
    """

    model_config = ConfigDict(populate_by_name=True, json_schema_extra=_digest_schema)

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

    @model_validator(mode="before")
    @classmethod
    def _from_digest(cls, value: object) -> object:
        if not (isinstance(value, dict) and "h" in value):
            return value
        if "p" in value:
            raise ValueError("a sketch has either p (profile_id) or h (its digest), not both")
        return {**{k: v for k, v in value.items() if k != "h"}, "p": digest_to_id(value["h"])}

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


def _packed(counts: Sequence[int]) -> str:
    # The models take runs as they arrive on the wire; `pack_runs` raises ValueError for
    # a count that no 5-byte varint holds.
    return pack_runs(encode_runs(counts))


def _compact_feature(c: NumericCounts | CategoricalCounts) -> CompactNumeric | CompactCategorical:
    if isinstance(c, NumericCounts):
        return CompactNumeric(
            counts=_packed(c.counts),
            mean=c.mean,
            m2=c.m2,
            min=c.min,
            max=c.max,
            missing=c.missing,
            infinite=sum(c.counts) - c.count,
        )
    return CompactCategorical(counts=_packed(c.counts), missing=c.missing)


def to_compact(sketch: WindowSketch) -> CompactSketch:
    """The compact form of ``sketch``; `from_compact` gives ``sketch`` back exactly.

    Raises `ValueError` for a sketch whose ``count`` exceeds its binned values (which
    no accumulator makes) or with a bin above `MAX_PACKED_COUNT`.
    """
    try:
        classification = None
        if sketch.classification is not None:
            c = sketch.classification
            classification = CompactClassification(
                confusion=pack_matrix([encode_runs(r) for r in c.confusion]),
                positives=pack_matrix([encode_runs(r) for r in c.positives]),
                negatives=pack_matrix([encode_runs(r) for r in c.negatives]),
            )
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
    except ValueError as e:
        raise ValueError(f"sketch has no compact form: {e}") from e


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
    digest = id_to_digest(compact.profile_id)
    if digest is not None:
        # Keys in the same order, "h" where "p" was.
        dumped = {("h" if k == "p" else k): (digest if k == "p" else v) for k, v in dumped.items()}
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
