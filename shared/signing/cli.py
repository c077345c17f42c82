"""``edgefleet keys ...``: create the signing keys, the first TUF metadata, the device bundle.

``keys init --dir KEYDIR`` writes the four TUF role keys and the director key into KEYDIR
(encrypted with the passphrase), an initial signed repository into ``--repo-dir``
(default ``KEYDIR/repository``) and the provisioning bundle (``trusted_root.json``,
``director_pub.json``) into ``--bundle-dir`` (default ``KEYDIR/bundle``). Move
``targets.key.pem`` (the release key) and ``root.key.pem`` offline afterwards.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``edgefleet keys`` and its subcommands."""
    parser = subparsers.add_parser("keys", help="signing keys and the TUF image repository")
    commands = parser.add_subparsers(title="keys commands", metavar="COMMAND")

    init = commands.add_parser("init", help="create keys, a TUF repository and a device bundle")
    init.add_argument("--dir", type=Path, required=True, help="where to write the keys")
    init.add_argument("--repo-dir", type=Path, help="repository dir (default: DIR/repository)")
    init.add_argument("--bundle-dir", type=Path, help="device bundle dir (default: DIR/bundle)")
    init.add_argument(
        "--expires-days", type=float, default=365.0, help="root metadata validity (days)"
    )
    init.add_argument(
        "--targets-expires-days", type=float, default=90.0, help="targets validity (days)"
    )
    _passphrase_args(init)
    init.set_defaults(handler=_init)

    export = commands.add_parser(
        "export-root", help="write the current trusted_root.json and director_pub.json"
    )
    export.add_argument("--repo-dir", type=Path, required=True, help="the TUF repository")
    export.add_argument("--dir", type=Path, required=True, help="the key dir (director key)")
    export.add_argument("--out", type=Path, required=True, help="directory to write the bundle")
    export.set_defaults(handler=_export_root)


def _passphrase_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--passphrase",
        help="key passphrase (default: $EDGEFLEET_KEY_PASSPHRASE; avoid on shared machines)",
    )
    parser.add_argument(
        "--insecure-no-passphrase",
        action="store_true",
        help="store private keys unencrypted (labs only)",
    )


def _init(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from edgefleet.shared.cli import CLIError
    from edgefleet.shared.signing import keys, layout, tuf_metadata
    from edgefleet.shared.signing.bundle import write_bundle
    from edgefleet.shared.signing.errors import KeyFileError

    key_dir: Path = args.dir
    repo_dir: Path = args.repo_dir or key_dir / "repository"
    bundle_dir: Path = args.bundle_dir or key_dir / "bundle"
    try:
        passphrase = keys.resolve_passphrase(
            args.passphrase, insecure_no_passphrase=args.insecure_no_passphrase
        )
    except KeyFileError as e:
        raise CLIError(str(e)) from e
    existing = [p for n in keys.ALL_KEYS if (p := keys.private_key_path(key_dir, n)).exists()]
    if existing:
        raise CLIError(f"keys exist already in {key_dir} ({existing[0].name}); refusing to replace")
    if (repo_dir / layout.METADATA_DIR / "root.json").exists():
        raise CLIError(f"a TUF repository exists already in {repo_dir}")

    signers = {name: keys.generate_signer() for name in keys.ALL_KEYS}
    key_dir.mkdir(parents=True, exist_ok=True)
    key_dir.chmod(0o700)
    for name, signer in signers.items():
        keys.save_signer(signer, key_dir, name, passphrase)
    expiries = tuf_metadata.Expiries.scaled(
        root_days=args.expires_days, targets_days=args.targets_expires_days
    )
    mds = tuf_metadata.initial_metadata(signers, datetime.now(UTC), expiries)
    layout.write_initial(repo_dir, mds)
    write_bundle(
        bundle_dir, tuf_metadata.to_bytes(mds["root"]), [signers[keys.DIRECTOR].public_key]
    )
    print(f"keys:        {key_dir} (move root and targets keys offline)")
    print(f"repository:  {repo_dir}")
    print(f"device bundle: {bundle_dir}/trusted_root.json, director_pub.json")
    return 0


def _export_root(args: argparse.Namespace) -> int:
    from edgefleet.shared.cli import CLIError
    from edgefleet.shared.signing import keys, layout
    from edgefleet.shared.signing.bundle import write_bundle
    from edgefleet.shared.signing.errors import KeyFileError

    root_path: Path = args.repo_dir / layout.METADATA_DIR / "root.json"
    try:
        root_bytes = root_path.read_bytes()
        director = keys.load_public_key(keys.public_key_path(args.dir, keys.DIRECTOR))
    except FileNotFoundError as e:
        raise CLIError(f"no TUF root at {root_path}") from e
    except KeyFileError as e:
        raise CLIError(str(e)) from e
    write_bundle(args.out, root_bytes, [director])
    print(f"wrote {args.out}/trusted_root.json and director_pub.json")
    return 0
