"""The python-tuf and securesystemslib names this project uses, in one place.

Those packages re-export these names without ``__all__``, which ``mypy --strict``
(no implicit re-export) reports at every import site; importing them here once keeps the
``type: ignore`` to this module while the types stay fully checked everywhere else.
"""

from securesystemslib.signer import (  # type: ignore[attr-defined]
    CryptoSigner,
    Signature,
    Signer,
    SSlibKey,
)
from tuf.api.metadata import (  # type: ignore[attr-defined]
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

__all__ = [
    "CryptoSigner",
    "MetaFile",
    "Metadata",
    "Root",
    "SSlibKey",
    "Signature",
    "Signed",
    "Signer",
    "Snapshot",
    "TargetFile",
    "Targets",
    "Timestamp",
]
