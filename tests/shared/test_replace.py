"""`replace` changes the fields it names and refuses names that are not fields."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field

from edgefleet.shared.replace import replace


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    state: str = "idle"
    attempts: int = 0
    schema_: str = Field(default="v1", alias="schema")


def test_replace_changes_the_named_fields_and_leaves_the_original() -> None:
    before = Record()
    after = replace(before, state="failed", attempts=2)
    assert after == Record(state="failed", attempts=2)
    assert before == Record()


def test_misspelt_field_name_is_refused_instead_of_ignored() -> None:
    # model_copy(update={"attempt": 3}) would return a copy whose attempts is still 0.
    with pytest.raises(TypeError, match="Record has no field 'attempt'; its fields are state"):
        replace(Record(), attempt=3)


def test_an_alias_is_not_a_field_name() -> None:
    assert replace(Record(), schema_="v2").schema_ == "v2"
    with pytest.raises(TypeError, match="no field 'schema'"):
        replace(Record(), schema="v2")
