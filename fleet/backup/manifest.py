"""What a backup holds: its parts (the database, the state directories), each file
with its size and sha256, and where each part lives in a fleet's settings.

Pure: no file is read here. A manifest read from a backup is checked before anything
is restored: every path stays inside its part (no ``..``, no absolute paths), names
are bounded, and every number has a bound, so a tampered manifest cannot make a
restore write outside its target or promise absurd sizes.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FORMAT = "edgefleet/v1/backup"
MANIFEST_NAME = "manifest.json"
DATABASE_NAME = "database.sqlite"
MAX_FILES = 1_000_000
MAX_FILE_BYTES = 1 << 44  # 16 TiB: larger than any model package, smaller than absurd
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Part(StrEnum):
    """A directory of fleet state, by the setting that names it."""

    DATA = "data"  # data_dir: audit keys and checkpoints, the device CA without keys_dir
    KEYS = "keys"  # keys_dir: signing keys, usually the repository and the device CA
    REPOSITORY = "repository"  # repository_dir, when it is not inside keys_dir
    MODELS = "models"  # models_dir, when it is not inside data_dir


class FileEntry(BaseModel):
    """One file of a part, by its path inside the part."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(min_length=1, max_length=4096)
    size: int = Field(ge=0, le=MAX_FILE_BYTES)
    sha256: Sha256
    mode: int = Field(ge=0, le=0o7777)

    @field_validator("path")
    @classmethod
    def _inside(cls, value: str) -> str:
        pure = PurePosixPath(value)
        if pure.is_absolute() or ".." in pure.parts or "\\" in value or "\0" in value:
            raise ValueError(f"{value!r} leaves its part")
        if str(pure) != value:
            raise ValueError(f"{value!r} is not a normalised relative path")
        return value


class PartEntry(BaseModel):
    """One part: where it was taken from (for the operator) and its files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    part: Part
    source: str = Field(max_length=4096, description="the directory it was taken from")
    files: list[FileEntry] = Field(max_length=MAX_FILES)


class DatabaseKind(StrEnum):
    """How the database was copied, and so how it goes back."""

    SQLITE = "sqlite"  # SQLite's online backup API: a database file
    POSTGRESQL = "postgresql"  # pg_dump --format=custom: restored by pg_restore


DATABASE_FILES = {DatabaseKind.SQLITE: DATABASE_NAME, DatabaseKind.POSTGRESQL: "database.pgdump"}


class DatabaseEntry(BaseModel):
    """The database copy, and the schema revision it is at."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: DatabaseKind
    file: FileEntry
    schema_revision: str | None = Field(max_length=32)

    @model_validator(mode="after")
    def _named_for_its_kind(self) -> DatabaseEntry:
        if self.file.path != DATABASE_FILES[self.kind]:
            raise ValueError(f"a {self.kind.value} copy is {DATABASE_FILES[self.kind]}")
        return self


class BackupManifest(BaseModel):
    """``manifest.json``: written last, so a backup without one is not a backup."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_: str = Field(default=FORMAT, alias="schema", pattern=f"^{FORMAT}$")
    created_at: datetime
    edgefleet_version: str = Field(max_length=64)
    database: DatabaseEntry | None = Field(description="None: backed up on its own")
    parts: list[PartEntry] = Field(max_length=len(Part))

    @field_validator("parts")
    @classmethod
    def _one_of_each(cls, parts: list[PartEntry]) -> list[PartEntry]:
        names = [p.part for p in parts]
        if len(set(names)) != len(names):
            raise ValueError("a part appears twice")
        return parts

    def part(self, part: Part) -> PartEntry | None:
        return next((p for p in self.parts if p.part is part), None)


def nested_parts(roots: dict[Part, Path]) -> dict[Part, list[Path]]:
    """For each part, the other parts' directories inside it: copied once, as their own
    part, and skipped while copying the enclosing one (the repository inside keys_dir
    is the usual case). ``roots`` are resolved, absolute directories."""
    inside: dict[Part, list[Path]] = {part: [] for part in roots}
    for part, root in roots.items():
        for other, other_root in roots.items():
            if other is not part and other_root != root and other_root.is_relative_to(root):
                inside[part].append(other_root)
    return inside


def is_transient(relative: PurePosixPath) -> bool:
    """Files that are not state: a durable write's temp file, an upload being spooled,
    SQLite's live database files (the database is copied by the backup API instead)."""
    name = relative.name
    if name.startswith(".") and name.endswith(".tmp"):
        return True
    if ".incoming" in relative.parts:
        return True
    return name.endswith((".db", ".db-wal", ".db-shm", ".db-journal"))
