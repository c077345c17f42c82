"""Canonical JSON, the bytes a director signature covers.

We use securesystemslib's ``encode_canonical`` (OLPC canonical JSON: keys sorted, no
whitespace, no floats, only quote and backslash escaped), the same encoding TUF's own
metadata signatures cover, so one encoder serves both halves of the Uptane split.
"""

from __future__ import annotations

from typing import Any

from edgefleet.shared.signing.errors import Malformed


def canonical_bytes(document: Any) -> bytes:
    """The canonical JSON encoding of ``document`` as UTF-8 bytes.

    Raises `Malformed` for a value canonical JSON cannot hold (a float, a non-str key...).
    """
    # Imported here: `edgefleet.shared.messages` imports this module (through the
    # director envelope), and an agent at idle signs and verifies nothing.
    from securesystemslib.exceptions import FormatError
    from securesystemslib.formats import encode_canonical

    try:
        text = encode_canonical(document)
    except FormatError as e:
        raise Malformed(f"not encodable as canonical JSON: {e}") from e
    if text is None:  # only when an output function is passed
        raise Malformed("canonical JSON encoder returned nothing")
    return text.encode("utf-8")
