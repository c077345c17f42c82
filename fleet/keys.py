"""The fleet's signing keys at start, and a one-call lab key set.

The fleet is the *director* (online key, signs every device's desired state) and runs
the image repository's online roles (snapshot, timestamp). In lab mode it also holds the
release (targets) key and publishes models itself; in production that key stays offline
with whoever approves releases (``edgefleet model sign``). The root key is needed only to
create a repository or rotate keys, so it is loaded when present and never required.

Key files are those of ``edgefleet keys init`` (`edgefleet.shared.signing.keys`), encrypted with
the passphrase in ``$EDGEFLEET_KEY_PASSPHRASE``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.fleet.repository import ImageRepository
from edgefleet.shared.signing import keys, layout, tuf_metadata
from edgefleet.shared.signing.bundle import write_bundle
from edgefleet.shared.signing.errors import KeyFileError
from edgefleet.shared.signing.tufapi import CryptoSigner, Signer, SSlibKey

logger = logging.getLogger(__name__)

ONLINE_ROLES = ("snapshot", "timestamp")


@dataclass(frozen=True)
class FleetKeys:
    """The keys one fleet replica signs with."""

    director: Signer
    repository: Mapping[str, Signer]  # TUF role -> signer; targets only in lab mode

    @property
    def director_public(self) -> SSlibKey:
        key = self.director.public_key
        if not isinstance(key, SSlibKey):
            raise KeyFileError(f"the director key is a {type(key).__name__}, expected SSlibKey")
        return key

    @property
    def holds_release_key(self) -> bool:
        return "targets" in self.repository


def passphrase_from_env(environ: Mapping[str, str] | None = None) -> bytes | None:
    """``$EDGEFLEET_KEY_PASSPHRASE`` as bytes, or None if unset or empty."""
    value = (os.environ if environ is None else environ).get(keys.PASSPHRASE_ENV)
    return value.encode() if value else None


def load_fleet_keys(keys_dir: Path, passphrase: bytes | None, *, lab_mode: bool) -> FleetKeys:
    """Load the director and online repository keys (plus the release key in lab mode).

    Raises `KeyFileError` naming the file for a missing key, a wrong or missing passphrase,
    or a file that is not an Ed25519 key; and, outside lab mode, if the release key sits
    in ``keys_dir`` (it belongs offline: say ``lab_mode`` if that is meant).
    """
    if not keys_dir.is_dir():
        raise KeyFileError(
            f"key directory {keys_dir} does not exist; create it with "
            f"`edgefleet keys init --dir {keys_dir}`"
        )
    required = (keys.DIRECTOR, *ONLINE_ROLES, *(("targets",) if lab_mode else ()))
    missing = [n for n in required if not keys.private_key_path(keys_dir, n).exists()]
    if missing:
        raise KeyFileError(
            f"key directory {keys_dir} lacks {', '.join(f'{n}.key.pem' for n in missing)}"
            + ("" if "targets" not in missing else " (lab mode needs the release key online)")
        )
    loaded = {n: keys.load_named(keys_dir, n, passphrase) for n in required}
    if keys.private_key_path(keys_dir, "root").exists():
        loaded["root"] = keys.load_named(keys_dir, "root", passphrase)
    if not lab_mode and keys.private_key_path(keys_dir, "targets").exists():
        logger.warning(
            "the release key %s is on the fleet but lab mode is off: it is not used;"
            " move it offline",
            keys.private_key_path(keys_dir, "targets"),
        )
    director = loaded.pop(keys.DIRECTOR)
    logger.info(
        "loaded director key %s and repository keys %s from %s",
        director.public_key.keyid[:12],
        ", ".join(sorted(loaded)),
        keys_dir,
    )
    return FleetKeys(director=director, repository=loaded)


def open_repository(repo_dir: Path, fleet_keys: FleetKeys) -> ImageRepository:
    """Open the image repository in ``repo_dir``, creating it if the root key is at hand.

    Raises `KeyFileError` if there is no repository and the keys cannot create one (tells
    the operator to run ``edgefleet keys init``), and what `ImageRepository` raises for a
    damaged one.
    """
    if (repo_dir / layout.METADATA_DIR / "root.json").exists():
        return ImageRepository(repo_dir, fleet_keys.repository)
    missing = [r for r in keys.TUF_ROLES if r not in fleet_keys.repository]
    if missing:
        raise KeyFileError(
            f"no TUF repository in {repo_dir} and the fleet lacks the {', '.join(missing)}"
            " key(s) to create one: run `edgefleet keys init --dir KEYDIR --repo-dir"
            f" {repo_dir}` first"
        )
    logger.info("creating a new TUF image repository in %s", repo_dir)
    return ImageRepository.create(repo_dir, fleet_keys.repository)


@dataclass(frozen=True)
class LabSetup:
    """Where `create_lab_setup` put things."""

    keys_dir: Path
    repository_dir: Path
    bundle_dir: Path  # trusted_root.json + director_pub.json for devices


def create_lab_setup(base_dir: Path, passphrase: bytes | None = None) -> LabSetup:
    """All five keys, a version-1 repository and a device bundle under ``base_dir``.

    What ``edgefleet keys init --dir base_dir`` does, in one call, for the demo and tests,
    with the same layout: keys in ``base_dir`` (unencrypted when ``passphrase`` is None),
    the repository in ``base_dir/repository`` (where ``keys_dir`` alone points the fleet),
    the bundle in ``base_dir/bundle``. Raises `KeyFileError` or `FileExistsError` if any of
    them exists already.
    """
    setup = LabSetup(base_dir, base_dir / "repository", base_dir / "bundle")
    signers: dict[str, CryptoSigner] = {n: keys.generate_signer() for n in keys.ALL_KEYS}
    setup.keys_dir.mkdir(parents=True, exist_ok=True)
    setup.keys_dir.chmod(0o700)
    for name, signer in signers.items():
        keys.save_signer(signer, setup.keys_dir, name, passphrase)
    mds = tuf_metadata.initial_metadata(signers, datetime.now(UTC), tuf_metadata.Expiries())
    layout.write_initial(setup.repository_dir, mds)
    write_bundle(
        setup.bundle_dir, tuf_metadata.to_bytes(mds["root"]), [signers[keys.DIRECTOR].public_key]
    )
    return setup
