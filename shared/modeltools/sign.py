"""``edgefleet model sign``: approve a model package offline with the release (targets) key.

Reads the repository's current ``targets.json``, adds the package as a target (length,
sha256, and ``custom`` {name, version, runtime}), bumps the version, signs it with the
release key and writes the result. Upload it with the package; the fleet's
`edgefleet.fleet.repository.ImageRepository.accept_targets` verifies it against the root before
serving it. The release key never needs to touch the fleet.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``edgefleet model sign``."""
    parser = commands.add_parser(
        "sign", help="sign a model package into targets metadata with the release key (offline)"
    )
    parser.add_argument("package", type=Path, help="the .efpkg file to approve")
    parser.add_argument("--release-key", type=Path, required=True, help="targets private key")
    parser.add_argument(
        "--metadata-in", type=Path, required=True, help="the repository's current targets.json"
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the new targets")
    parser.add_argument("--name", help="target name (default: the package's file name)")
    parser.add_argument("--model-name", help="model name recorded in the target's custom data")
    parser.add_argument("--model-version", help="semantic version recorded with the target")
    parser.add_argument("--runtime", help="runtime recorded with the target (onnx, tflite)")
    parser.add_argument(
        "--expires-days", type=float, default=90.0, help="targets metadata validity (days)"
    )
    parser.add_argument(
        "--passphrase", help="release key passphrase (default: $EDGEFLEET_KEY_PASSPHRASE)"
    )
    parser.add_argument(
        "--insecure-no-passphrase", action="store_true", help="the release key is unencrypted"
    )
    parser.set_defaults(handler=_sign)


def _sign(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from edgefleet.shared.cli import CLIError
    from edgefleet.shared.durable import atomic_write_bytes
    from edgefleet.shared.signing import keys, tuf_metadata
    from edgefleet.shared.signing.errors import KeyFileError, Malformed
    from edgefleet.shared.signing.versions import Version

    custom = {
        key: value
        for key, value in (
            ("name", args.model_name),
            ("version", args.model_version),
            ("runtime", args.runtime),
        )
        if value is not None
    }
    try:
        if args.model_version is not None:
            Version.parse(args.model_version)
        passphrase = keys.resolve_passphrase(
            args.passphrase, insecure_no_passphrase=args.insecure_no_passphrase
        )
        signer = keys.load_signer(args.release_key, passphrase)
        current = args.metadata_in.read_bytes()
        md = tuf_metadata.sign_targets_offline(
            current,
            args.package,
            name=args.name or args.package.name,
            custom=custom,
            release_signer=signer,
            now=datetime.now(UTC),
            expiries=tuf_metadata.Expiries(targets=timedelta(days=args.expires_days)),
        )
    except (KeyFileError, Malformed, ValueError) as e:
        raise CLIError(str(e)) from e
    except OSError as e:
        raise CLIError(f"cannot read {e.filename}: {e.strerror}") from e
    atomic_write_bytes(args.out, tuf_metadata.to_bytes(md), create_parents=True)
    info = md.signed.targets[args.name or args.package.name]
    print(
        f"signed {info.path} ({info.length} bytes, sha256 {tuf_metadata.sha256_of(info)}) "
        f"into targets v{md.signed.version}: {args.out}"
    )
    return 0
