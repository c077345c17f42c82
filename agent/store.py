"""The device's model store: content-addressed model directories and two slots.

Layout under ``root``::

    models/<sha256>/   one extracted package (manifest.json, the model file, golden
                       samples) plus `INDEX_FILE`, the store's own hash of every file;
                       <sha256> is the package artifact's hash (the TUF target's)
    staging/           temp directories being filled; anything here after a crash is junk
    active  -> models/<sha256>     relative symlinks, switched by an atomic rename
    previous -> models/<sha256>
    displaced -> models/<sha256>   only while an activation is undecided: the model
                                   ``previous`` named before it

Invariants:
- a ``models/<sha256>`` directory is complete: it is filled and fsync'd under
  ``staging/`` and renamed into place in one step, and removed by renaming it back into
  ``staging/`` first;
- a slot is switched by creating a temp symlink and `os.replace`-ing it over the slot,
  then fsync'ing ``root``, so a slot always names the old or the new directory;
- `activate` moves ``previous`` before ``active``, so at every instant ``active`` names a
  verified model and ``previous`` names the model before it (or the same one);
- `activate` first keeps the model ``previous`` named under ``displaced``, so a model is
  never left on disk unnamed: `gc` (a commit) forgets it, `rollback` makes it ``previous``
  again, so after a rollback ``previous`` is the model before the restored one, not the
  restored one itself (nor a failed one);
- at rest (no activation undecided) `problems` is empty: ``active`` verifies, ``previous``
  differs from it unless the store holds no other model, and no model directory is named
  by neither slot (`gc` and the runner's clean-ups see to the last);
- after `recover` (run at startup) ``active`` names a directory that verifies, or is
  absent when no verified model exists; a crash at any instant of `stage`, `activate`,
  `rollback` or `gc` therefore leaves a verified model active.

``on_step`` (tests only) is called with a step name before each file-system mutation, so
a test can stop an operation after any step and check what `recover` makes of it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgefleet.shared.durable import (
    atomic_symlink,
    fsync_dir,
    fsync_file,
    remove_stray_temp_files,
)
from edgefleet.shared.hashing import sha256_file
from edgefleet.shared.manifest import MANIFEST_FILE, ModelManifest

log = logging.getLogger(__name__)

INDEX_FILE = ".store-index.json"
SLOTS = ("active", "previous")
DISPLACED = "displaced"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class StoreError(Exception):
    """A model directory that is missing, incomplete or does not match its hashes."""


@dataclass
class RecoveryReport:
    """What `ModelStore.recover` found and did."""

    active: str | None
    previous: str | None
    removed: list[str] = field(default_factory=list)
    fell_back_from: str | None = None
    problems: list[str] = field(default_factory=list)


def _no_step(_: str) -> None:
    return None


def _check_sha(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise ValueError(f"content address {sha256!r} is not a lowercase hex sha256")
    return sha256


class ModelStore:
    """Content-addressed model directories with an ``active`` and a ``previous`` slot."""

    def __init__(self, root: Path, *, on_step: Callable[[str], None] | None = None) -> None:
        self.root = root
        self.models_dir = root / "models"
        self.staging_dir = root / "staging"
        self._step = on_step or _no_step
        for directory in (root, self.models_dir, self.staging_dir):
            directory.mkdir(parents=True, exist_ok=True)

    # --- reading ------------------------------------------------------------------------

    def path(self, sha256: str) -> Path:
        """The directory of model ``sha256`` (it may not exist)."""
        return self.models_dir / _check_sha(sha256)

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_dir()

    def active(self) -> str | None:
        """The sha256 the ``active`` slot names, or None."""
        return self._slot("active")

    def previous(self) -> str | None:
        """The sha256 the ``previous`` slot names, or None."""
        return self._slot("previous")

    def displaced(self) -> str | None:
        """The model ``previous`` named before the undecided activation, or None."""
        return self._slot(DISPLACED)

    def in_use(self) -> set[str]:
        """Every model a slot (``active``, ``previous``, ``displaced``) names."""
        return {sha for sha in (self.active(), self.previous(), self.displaced()) if sha}

    def problems(self) -> list[str]:
        """What breaks the store's invariants at rest (no activation undecided); [] if none.

        A model that does not verify, ``previous`` equal to ``active`` while another model
        is stored, a ``displaced`` slot left over, a model no slot names. Never raises.
        """
        found: list[str] = []
        active, previous, displaced = self.active(), self.previous(), self.displaced()
        for slot, sha in (("active", active), ("previous", previous)):
            if sha is not None and not self.is_verified(sha):
                found.append(f"{slot} model {sha[:12]} does not verify")
        models = self.models()
        if active is not None and previous == active and len(models) > 1:
            found.append(
                f"previous is the active model {active[:12]} though the store holds "
                f"{len(models)} models"
            )
        if displaced is not None:
            found.append(f"displaced still names {displaced[:12]}: an activation is undecided")
        named = {active, previous, displaced}
        found += [f"model {sha[:12]} is named by no slot" for sha in models if sha not in named]
        return found

    def models(self) -> list[str]:
        """Every model directory's sha256."""
        return sorted(p.name for p in self.models_dir.iterdir() if _SHA256.match(p.name))

    def manifest(self, sha256: str) -> ModelManifest:
        """The manifest of a stored model; raises `StoreError` if missing or invalid."""
        return _read_manifest(self.path(sha256))

    def verify(self, sha256: str, expected: str | None = None) -> ModelManifest:
        """Re-hash a stored model's files against its manifest and the store's index.

        ``expected``, if given, is the model file's sha256 the caller expects (from a
        signed manifest). Returns the manifest; raises `StoreError` naming the file and
        both hashes when anything is missing or differs.
        """
        manifest = _verify_dir(self.path(sha256))
        if expected is not None and manifest.sha256 != expected:
            raise StoreError(
                f"model {sha256[:12]}: model file sha256 is {manifest.sha256}, expected {expected}"
            )
        return manifest

    def is_verified(self, sha256: str) -> bool:
        try:
            self.verify(sha256)
        except StoreError as e:
            log.warning("model %s does not verify: %s", sha256[:12], e)
            return False
        return True

    # --- writing ------------------------------------------------------------------------

    def stage(self, sha256: str, fill: Callable[[Path], None]) -> Path:
        """Add model ``sha256``: ``fill`` writes the package's files into an empty directory.

        Idempotent: a model already stored and verified is kept as is. Raises
        `StoreError` if the filled directory does not verify (it is then discarded), and
        whatever ``fill`` raises.
        """
        final = self.path(sha256)
        if final.is_dir():
            if self.is_verified(sha256):
                return final
            self._discard(final)
        tmp = self.staging_dir / f"{sha256}.{secrets.token_hex(6)}"
        self._step("stage.mkdir")
        tmp.mkdir()
        try:
            self._step("stage.fill")
            fill(tmp)
            self._step("stage.index")
            # The index hashes the files just written; checking the manifest against
            # it (rather than hashing them all again) verifies what is on disk.
            _check_against_index(tmp, _write_index(tmp))
        except Exception:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._step("stage.fsync")
        _fsync_tree(tmp)
        self._step("stage.rename")
        os.rename(tmp, final)
        self._step("stage.fsync_dir")
        fsync_dir(self.models_dir)
        log.debug("staged model %s", sha256[:12])
        return final

    def activate(self, sha256: str) -> None:
        """Make model ``sha256`` active; the model active before becomes ``previous``.

        The model ``previous`` named until now is kept under ``displaced`` until the
        activation is decided (`gc` commits it, `rollback` undoes it). Idempotent when
        ``sha256`` is already active. Raises `StoreError` if the model is not stored or does
        not verify (nothing is switched then).
        """
        self.verify(sha256)
        current = self.active()
        if current == sha256:
            return
        if current is not None:
            previous = self.previous()
            if previous is not None and previous not in (current, sha256):
                self._switch(DISPLACED, previous)
            self._switch("previous", current)
        self._switch("active", sha256)
        log.info("active model %s (previous %s)", sha256[:12], (current or "none")[:12])

    def rollback(self) -> str:
        """Make ``previous`` active again; returns its sha256.

        ``previous`` then names the model ``displaced`` kept (the one before the restored
        model), when there is one that verifies; otherwise it stays as is, and a second
        call changes nothing. To restore one model by name, idempotently, use
        `ensure_active`. Raises `StoreError` if there is no previous model or it does not
        verify.
        """
        previous = self.previous()
        if previous is None:
            raise StoreError("cannot roll back: the store has no previous model")
        self.verify(previous)
        if self.active() != previous:
            self._switch("active", previous)
            log.info("rolled back to model %s", previous[:12])
        self._settle()
        return previous

    def deactivate(self) -> None:
        """Leave no model active (undoing a first install that failed)."""
        link = self.root / "active"
        if link.is_symlink():
            self._step("deactivate.unlink")
            link.unlink()
            fsync_dir(self.root)

    def ensure_active(self, sha256: str | None) -> None:
        """Make ``sha256`` the active model (None: no model), by the least change.

        Raises `StoreError` as `activate` and `rollback`.
        """
        if sha256 is None:
            self.deactivate()
        elif self.active() == sha256:
            self.verify(sha256)
            self._settle()  # a rollback cut short before it restored ``previous``
        elif self.previous() == sha256:
            self.rollback()
        else:
            self.activate(sha256)

    def remove(self, sha256: str) -> bool:
        """Delete a model that no slot names; returns whether it existed.

        Raises `StoreError` for a model a slot names (`in_use`).
        """
        if sha256 in self.in_use():
            raise StoreError(f"model {sha256[:12]} is in use by a slot and cannot be removed")
        path = self.path(sha256)
        if not path.is_dir():
            return False
        self._discard(path)
        return True

    def gc(self, keep: Iterable[str] = ()) -> list[str]:
        """Remove every model but the active, the previous and ``keep``; returns the removed.

        This commits the last activation: the model ``displaced`` kept is forgotten first.
        """
        if (self.root / DISPLACED).is_symlink():
            self._unlink(DISPLACED)
        wanted = {self.active(), self.previous(), *keep}
        removed = [sha for sha in self.models() if sha not in wanted]
        for sha in removed:
            self._discard(self.path(sha))
        return removed

    def recover(self) -> RecoveryReport:
        """Repair what a crash left (run at startup, before anything else uses the store).

        Removes stray temp slots and everything under ``staging/``. A slot that names a
        missing or unverifiable model falls back along ``active``, ``previous``,
        ``displaced``: ``active`` becomes the first of them that verifies (or is removed
        when none does), ``previous`` the next different one, and ``displaced`` stays
        only while it differs from both (an activation still undecided). So a rollback
        or an activation cut short ends with ``previous`` naming the model before the
        active one, not the active one itself. Never raises `StoreError`; raises
        `OSError` if the file system refuses.
        """
        removed = [p.name for p in remove_stray_temp_files(self.root)]
        for entry in self.staging_dir.iterdir():
            _remove_path(entry)
            removed.append(f"staging/{entry.name}")
        if removed:
            fsync_dir(self.staging_dir)
        report = RecoveryReport(active=None, previous=None, removed=removed)
        named = {slot: self._slot(slot) for slot in (*SLOTS, DISPLACED)}
        chain = self._verified_chain(named, report.problems)
        active = chain[0] if chain else None
        if len(chain) > 1:
            previous: str | None = chain[1]
        else:  # nothing else to fall back to: a previous equal to active may stay
            previous = active if named["previous"] == active else None
        displaced = chain[2] if len(chain) > 2 else None
        if named["active"] != active:
            report.fell_back_from = named["active"]
        # Active first, so that a crash during recovery leaves a verified model active.
        for slot, want in (("active", active), ("previous", previous), (DISPLACED, displaced)):
            if want is None:
                if (self.root / slot).is_symlink():
                    self._unlink(slot)
            elif named[slot] != want:
                self._switch(slot, want)
        report.active, report.previous = active, previous
        for problem in report.problems:
            log.warning("model store %s: %s", self.root, problem)
        return report

    # --- internals ----------------------------------------------------------------------

    def _slot(self, slot: str) -> str | None:
        try:
            target = os.readlink(self.root / slot)
        except FileNotFoundError:
            return None
        name = Path(target).name
        return name if _SHA256.match(name) else None

    def _verified_chain(self, named: dict[str, str | None], problems: list[str]) -> list[str]:
        """The distinct models the slots ``named`` (in fall-back order) that verify."""
        chain: list[str] = []
        for slot, sha in named.items():
            if sha is not None and sha in chain:
                continue
            if sha is not None and self.is_verified(sha):
                chain.append(sha)
            elif sha is not None or self._dangling(slot):
                problems.append(f"{slot} model {sha} is missing or does not verify")
        return chain

    def _settle(self) -> None:
        """After a rollback: ``previous`` names the model ``displaced`` kept, if it verifies."""
        displaced = self.displaced()
        if displaced is None:
            if (self.root / DISPLACED).is_symlink():
                self._unlink(DISPLACED)
            return
        active, previous = self.active(), self.previous()
        if previous in (None, active) and displaced != active and self.is_verified(displaced):
            self._switch("previous", displaced)
        elif previous not in (None, active):
            return  # an activation is still undecided: keep what it displaced
        self._unlink(DISPLACED)

    def _unlink(self, slot: str) -> None:
        self._step(f"{slot}.unlink")
        (self.root / slot).unlink(missing_ok=True)
        fsync_dir(self.root)

    def _dangling(self, slot: str) -> bool:
        link = self.root / slot
        return link.is_symlink() and self._slot(slot) is None

    def _switch(self, slot: str, sha256: str) -> None:
        target = os.path.join("models", sha256)
        atomic_symlink(self.root / slot, target, on_step=lambda s: self._step(f"{slot}.{s}"))

    def _discard(self, path: Path) -> None:
        # Renamed into staging first, so a crash mid-delete leaves no half directory
        # under models/ (recover empties staging/).
        trash = self.staging_dir / f".trash-{path.name}.{secrets.token_hex(6)}"
        self._step("discard.rename")
        os.rename(path, trash)
        fsync_dir(self.models_dir)
        self._step("discard.rmtree")
        shutil.rmtree(trash)


def _read_manifest(directory: Path) -> ModelManifest:
    path = directory / MANIFEST_FILE
    try:
        return ModelManifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise StoreError(f"{path}: missing") from None
    except (OSError, ValidationError) as e:
        raise StoreError(f"{path}: not a valid manifest: {e}") from e


def _write_index(directory: Path) -> dict[str, dict[str, Any]]:
    """Hash every file of ``directory`` into its `INDEX_FILE`; returns the index."""
    files: dict[str, dict[str, Any]] = {
        str(p.relative_to(directory)): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != INDEX_FILE
    }
    (directory / INDEX_FILE).write_text(json.dumps({"files": files}, indent=1, sort_keys=True))
    return files


def _verify_dir(directory: Path) -> ModelManifest:
    if not directory.is_dir():
        raise StoreError(f"{directory}: no such model directory")
    index_path = directory / INDEX_FILE
    try:
        index = json.loads(index_path.read_bytes())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{index_path}: missing or unreadable ({e})") from e
    for name, expected in index.items():
        path = directory / name
        if not path.is_file():
            raise StoreError(f"{path}: missing")
        found = sha256_file(path)
        if found != expected["sha256"]:
            raise StoreError(f"{path}: sha256 is {found}, the store recorded {expected['sha256']}")
    return _check_against_index(directory, index)


def _check_against_index(directory: Path, index: dict[str, dict[str, Any]]) -> ModelManifest:
    """The manifest of ``directory``, checked against an ``index`` that matches the files.

    The model file's hash and size come from the index, so the caller must have just
    hashed the files into it (`_write_index`) or checked them against it (`_verify_dir`).
    """
    manifest = _read_manifest(directory)
    model = directory / manifest.model_file
    entry = index.get(manifest.model_file)
    if entry is None:
        raise StoreError(f"{directory}: model file {manifest.model_file} is not in the index")
    if entry["sha256"] != manifest.sha256:
        raise StoreError(
            f"{model}: sha256 is {entry['sha256']}, the manifest says {manifest.sha256}"
        )
    size = model.stat().st_size
    if size != manifest.size_bytes:
        raise StoreError(f"{model}: {size} bytes, the manifest says {manifest.size_bytes}")
    return manifest


def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.rglob("*"), reverse=True):
        if path.is_file():
            fsync_file(path)
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(directory)


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
