"""`replace`: a copy of a pydantic model with some fields changed, refusing unknown names.

`BaseModel.model_copy(update={...})` takes any key: a misspelt field name is stored as a
stray attribute that nothing reads (even on a model that forbids extra fields, since
``model_copy`` does not validate), so the intended change silently never happens.
`replace` is `dataclasses.replace` for pydantic models: every name must be a field of the
model (the Python name, not an alias).

Like ``model_copy``, and unlike `dataclasses.replace`, it does not validate the new
values: the pure cores call it on every step (for each inference during probation, for
each device in a rollout tick), where what they pass is typed already.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def replace(model: M, /, **changes: object) -> M:
    """A copy of ``model`` with ``changes`` applied (a shallow copy, like ``model_copy``).

    Raises `TypeError` naming the names that are not fields of ``model``.
    """
    fields = type(model).model_fields
    unknown = [name for name in changes if name not in fields]
    if unknown:
        raise TypeError(
            f"{type(model).__name__} has no field {', '.join(map(repr, unknown))}; "
            f"its fields are {', '.join(fields)}"
        )
    return model.model_copy(update=changes)
