#!/usr/bin/env python3
"""Build ``edgefleet-agent_<version>_<arch>.deb``: the agent in its own virtualenv.

    python packaging/deb/build.py --arch amd64 [--version 0.1.0+1] [--out dist/]

The package is self-contained: a virtualenv at /usr/lib/edgefleet-agent whose interpreter
is the device's /usr/bin/python3 (Debian bookworm: 3.11, hence ``python3 (>= 3.11~),
python3 (<< 3.12)``) and whose site-packages hold the edgefleet wheel with the agent extra
and its dependencies as wheels for the *target* architecture (``pip --platform``), so
nothing is fetched or compiled at install. The bytecode is compiled here, with hash-checked
invalidation, because the agent runs as an unprivileged user that cannot write it.

What it installs (see README "Debian package")::

    /usr/lib/edgefleet-agent/          the virtualenv (bin/python3 -> /usr/bin/python3)
    /usr/bin/edgefleet                 -> the venv's launcher
    /lib/systemd/system/edgefleet-agent.service   packaging/systemd's unit, system user
    /lib/systemd/system/edgefleet-agent-restart.{path,service}   the deferred restart
    /usr/libexec/edgefleet-agent/upgrade-restart
    /etc/edgefleet/agent.toml          conffile (packaging/agent/agent.example.toml)
    /var/lib/edgefleet-agent           state, made by postinst, removed by purge

Steps, each reusable by the tests: `build_wheel` (python -m build), `download_wheels`
(pip download into a cache directory per architecture), `stage` (the file tree),
`write_deb` (control files with the version, then dpkg-deb). Only `write_deb` depends on
the version, so an upgrade test stages once and writes two versions.

Raises `BuildError` (a message naming the step and the cause) on any failure.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PACKAGE = "edgefleet-agent"
VENV = Path("/usr/lib/edgefleet-agent")
PYTHON = "3.11"
# glibc of Debian bookworm: wheels tagged for a newer one would not load there.
GLIBC_MAX = (2, 36)
MANYLINUX_MIN = (2, 17)
ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}
# The ELF e_machine of each: EM_X86_64, EM_AARCH64.
ELF_MACHINES = {"amd64": 62, "arm64": 183}
# manylinux wheels may link only these system libraries (PEP 599/600), hence the Depends.
DEPENDS = (
    "python3 (>= 3.11~)",
    "python3 (<< 3.12)",
    "libc6 (>= 2.28)",
    "libgcc-s1",
    "libstdc++6",
    "adduser",
    "init-system-helpers (>= 1.54~)",
)
MAINTAINER = "edgefleet developers <edgefleet@lists.edgefleet.dev>"
# Debian versions: [epoch:]upstream[-revision], upstream starting with a digit.
_VERSION = re.compile(r"^(\d+:)?\d[A-Za-z0-9.+~]*(-[A-Za-z0-9.+~]+)?$")
# The lines of packaging/systemd's unit that the packaged unit changes: a system user
# made by postinst instead of DynamicUser, so the state in /var/lib/edgefleet-agent is
# the package's (DynamicUser keeps it under /var/lib/private) and purge can remove it.
UNIT_CHANGES = {
    "DynamicUser=yes\n": "User=edgefleet-agent\nGroup=edgefleet-agent\n",
    "Wants=network-online.target\n": (
        "Documentation=man:edgefleet(1)\nWants=network-online.target\n"
    ),
}


COMPRESSION = {"xz": ("-Zxz", "-z1"), "gzip": ("-Zgzip", "-z1"), "none": ("-Znone",)}
# pip's words for a requirement that has no distribution matching the target platform.
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")
VCS_FILES = frozenset({".gitignore", ".gitattributes", ".gitmodules", ".hgignore", ".cvsignore"})


class BuildError(Exception):
    """A step of the package build failed; the message names the step and the cause."""


# ---------------------------------------------------------------------------- pure parts


def check_version(version: str) -> str:
    """``version`` if it is a Debian version; raises `BuildError` if not."""
    if not _VERSION.fullmatch(version):
        raise BuildError(
            f"version {version!r} is not a Debian version ([epoch:]upstream[-revision],"
            " starting with a digit, letters, digits and . + ~ only)"
        )
    return version


def platform_tags(arch: str) -> list[str]:
    """The manylinux platform tags a wheel for Debian bookworm on ``arch`` may carry."""
    machine = machine_of(arch)
    tags = [f"manylinux2014_{machine}"]
    tags += [
        f"manylinux_{MANYLINUX_MIN[0]}_{minor}_{machine}"
        for minor in range(MANYLINUX_MIN[1], GLIBC_MAX[1] + 1)
    ]
    return tags


def machine_of(arch: str) -> str:
    """The wheel/ELF machine name of a Debian architecture; raises `BuildError`."""
    try:
        return ARCHES[arch]
    except KeyError:
        raise BuildError(f"architecture {arch!r} is not one of {sorted(ARCHES)}") from None


def packaged_unit(unit: str) -> str:
    """packaging/systemd's unit as the package installs it; raises `BuildError`."""
    for old, new in UNIT_CHANGES.items():
        if unit.count(old) != 1:
            raise BuildError(f"the agent's unit has no single line {old.strip()!r} to replace")
        unit = unit.replace(old, new)
    return unit


def control(*, version: str, arch: str, installed_kib: int) -> str:
    """The DEBIAN/control file."""
    return (
        f"Package: {PACKAGE}\n"
        f"Version: {check_version(version)}\n"
        f"Architecture: {arch}\n"
        f"Maintainer: {MAINTAINER}\n"
        f"Installed-Size: {installed_kib}\n"
        f"Depends: {', '.join(DEPENDS)}\n"
        "Section: net\n"
        "Priority: optional\n"
        "Description: edgefleet device agent: ML model serving with signed updates\n"
        " The edgefleet agent runs quantized ONNX models on an edge device, watches its\n"
        " inputs and outputs for drift, reports to the fleet over MQTT and installs\n"
        " signed model updates atomically, rolling back by itself when a new model\n"
        " is unhealthy.\n"
        " .\n"
        " This package is self-contained: the agent and its Python dependencies live\n"
        " in their own virtualenv under /usr/lib/edgefleet-agent, run by the system's\n"
        " python3. An upgrade restarts the agent only when no model update is in\n"
        " progress.\n"
    )


def changelog(version: str, date: str) -> str:
    """The Debian changelog of a native package built from this tree."""
    return (
        f"{PACKAGE} ({version}) unstable; urgency=medium\n\n"
        f"  * Build of edgefleet {version} for devices.\n\n"
        f" -- {MAINTAINER}  {date}\n"
    )


def launcher() -> str:
    """The venv's ``bin/edgefleet``: the console script, run by the venv's interpreter.

    A shell script that execs, so the agent keeps the PID systemd started (Type=notify
    with NotifyAccess=main); ``-P`` keeps the working directory (the state directory)
    off ``sys.path``.
    """
    return (
        "#!/bin/sh\n"
        "# edgefleet from its own virtualenv (the edgefleet-agent package).\n"
        f'exec {VENV}/bin/python3 -P -m edgefleet.shared.cli "$@"\n'
    )


def pyvenv_cfg() -> str:
    """The venv's marker: Python finds its site-packages by it, not the system's."""
    return f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {PYTHON}\n"


# ------------------------------------------------------------------------------ I/O steps


def run(command: list[str], *, step: str, env: dict[str, str] | None = None) -> str:
    """Run ``command``; raises `BuildError` with its output if it fails."""
    try:
        result = subprocess.run(  # noqa: S603 - our own argument lists
            command, capture_output=True, text=True, check=False, env=env, timeout=900
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BuildError(f"{step}: {command[0]} could not run: {e}") from e
    if result.returncode != 0:
        raise BuildError(
            f"{step}: {' '.join(command[:4])} ... exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result.stdout


def project_version() -> str:
    """The version in pyproject.toml."""
    with (REPO / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def build_wheel(work: Path) -> Path:
    """The edgefleet wheel, built from this tree with ``python -m build --wheel``.

    setuptools writes build/ and *.egg-info into the source tree; DIST_EXTRA_CONFIG moves
    both into ``work`` (as tests/test_packaging.py does).
    """
    work.mkdir(parents=True, exist_ok=True)
    (work / "egg").mkdir(exist_ok=True)
    extra = work / "setuptools.cfg"
    extra.write_text(
        f"[build]\nbuild_base = {work / 'build'}\n[egg_info]\negg_base = {work / 'egg'}\n"
    )
    out = work / "dist"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "DIST_EXTRA_CONFIG": str(extra)}
    run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO)],
        step="edgefleet wheel",
        env=env,
    )
    wheels = sorted(out.glob("edgefleet-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"edgefleet wheel: expected one wheel in {out}, found {wheels}")
    return wheels[0]


def missing_wheels(pip_output: str) -> list[str]:
    """The requirements pip found no wheel for, in the order it reported them."""
    return list(dict.fromkeys(_NO_MATCH.findall(pip_output)))


def download_wheels(wheel: Path, arch: str, cache: Path) -> Path:
    """The wheels of ``edgefleet[agent]``'s dependencies for ``arch``, in ``cache/<arch>``.

    From the indexes pip is configured with. Raises `BuildError` naming the requirements
    that have no wheel for ``arch`` (pip stops at the first one it cannot resolve).
    """
    into = cache / arch
    into.mkdir(parents=True, exist_ok=True)
    for old in into.glob("edgefleet-*.whl"):
        old.unlink()
    platforms = [arg for tag in platform_tags(arch) for arg in ("--platform", tag)]
    try:
        run(
            [
                sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                "--only-binary=:all:", *platforms, "--python-version", PYTHON,
                "--implementation", "cp", "--abi", f"cp{PYTHON.replace('.', '')}",
                "-d", str(into), f"{wheel}[agent]",
            ],
            step=f"wheels for {arch}",
        )  # fmt: skip
    except BuildError as e:
        missing = missing_wheels(str(e))
        if not missing:
            raise
        raise BuildError(
            f"wheels for {arch}: the package index has no wheel for CPython {PYTHON} on"
            f" {machine_of(arch)} (manylinux, glibc <= {GLIBC_MAX[0]}.{GLIBC_MAX[1]}) of:"
            f" {', '.join(missing)}; the agent cannot be packaged for {arch} from this index"
            " (pip's --index-url / --find-links: PIP_INDEX_URL, PIP_FIND_LINKS)"
        ) from e
    return into


def stage(wheel: Path, wheels: Path, arch: str, root: Path) -> Path:
    """The package's file tree under ``root`` (emptied first), without DEBIAN/."""
    shutil.rmtree(root, ignore_errors=True)
    venv = root / VENV.relative_to("/")
    site = venv / "lib" / f"python{PYTHON}" / "site-packages"
    platforms = [arg for tag in platform_tags(arch) for arg in ("--platform", tag)]
    run(
        [
            sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
            "--no-index", "--find-links", str(wheels), "--only-binary=:all:", *platforms,
            "--python-version", PYTHON, "--implementation", "cp",
            "--abi", f"cp{PYTHON.replace('.', '')}", "--no-compile", "--target", str(site),
            f"{wheel}[agent]",
        ],
        step=f"install wheels for {arch}",
        env=_no_pip_config(),
    )  # fmt: skip
    # pip --target writes console scripts with this machine's interpreter: ours replace them.
    shutil.rmtree(site / "bin", ignore_errors=True)
    prune(site)
    bin_dir = venv / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python3").symlink_to("../../../bin/python3")  # /usr/bin/python3
    (bin_dir / "python").symlink_to("python3")
    write(bin_dir / "edgefleet", launcher(), mode=0o755)
    write(venv / "pyvenv.cfg", pyvenv_cfg())
    run(
        [
            sys.executable, "-m", "compileall", "-q", "-j", "0",
            "--invalidation-mode", "checked-hash", "-s", str(root), "-p", "/", str(site),
        ],
        step="compile bytecode",
    )  # fmt: skip
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/edgefleet").symlink_to("../lib/edgefleet-agent/bin/edgefleet")
    units = root / "lib/systemd/system"
    units.mkdir(parents=True)
    unit = (REPO / "packaging/systemd/edgefleet-agent.service").read_text()
    write(units / "edgefleet-agent.service", packaged_unit(unit))
    for name in ("edgefleet-agent-restart.path", "edgefleet-agent-restart.service"):
        shutil.copyfile(HERE / name, units / name)
    write(
        root / "usr/libexec/edgefleet-agent/upgrade-restart",
        (HERE / "upgrade-restart").read_text(),
        mode=0o755,
    )
    write(
        root / "etc/edgefleet/agent.toml", (REPO / "packaging/agent/agent.example.toml").read_text()
    )
    doc = root / "usr/share/doc" / PACKAGE
    write(doc / "copyright", (HERE / "copyright").read_text())
    write_gz(root / "usr/share/man/man1/edgefleet.1.gz", (HERE / "edgefleet.1").read_bytes())
    write(root / "usr/share/lintian/overrides" / PACKAGE, (HERE / "lintian-overrides").read_text())
    normalise_modes(root)
    foreign = foreign_binaries(root, arch)
    if foreign:
        shown = ", ".join(str(path.relative_to(root)) for path in foreign[:5])
        raise BuildError(f"stage: {len(foreign)} binaries are not {machine_of(arch)} code: {shown}")
    return root


def _no_pip_config() -> dict[str, str]:
    """The environment without pip's configuration: only the downloaded wheels count.

    A find-links directory from pip.conf or PIP_FIND_LINKS would otherwise add wheels to
    the set that `download_wheels` resolved.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull}


def elf_machine(path: Path) -> int | None:
    """The ELF e_machine of the file at ``path``, or None if it is no ELF file."""
    with path.open("rb") as f:
        head = f.read(20)
    if not head.startswith(b"\x7fELF") or len(head) < 20:
        return None
    # e_machine sits at offset 18, in the byte order EI_DATA (offset 5) names.
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def foreign_binaries(root: Path, arch: str) -> list[Path]:
    """The ELF files under ``root`` built for another machine than ``arch``'s."""
    expected = ELF_MACHINES[arch]
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            machine = elf_machine(path)
            if machine is not None and machine != expected:
                found.append(path)
    return found


def prune(site: Path) -> None:
    """Drop what a device never runs from the bundled distributions (not from edgefleet).

    Their test suites (numpy's alone is ~750 files) and version-control files a wheel
    carried by mistake.
    """
    for path in sorted(site.rglob("*"), reverse=True):
        if not path.exists() or path.relative_to(site).parts[0] == "edgefleet":
            continue
        if path.is_dir() and path.name == "tests":
            shutil.rmtree(path)
        elif path.name in VCS_FILES:
            path.unlink()


def normalise_modes(root: Path) -> None:
    """0755 for directories and programs (ELF executables, scripts), 0644 for the rest.

    Wheels carry whatever modes their builders had: shared libraries and data files are
    often executable, which no device needs.
    """
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o755)
            continue
        with path.open("rb") as f:
            head = f.read(20)
        # A shared library is ELF too, but is loaded, not run (lintian: it must not be +x).
        program = head.startswith(b"#!") or (head.startswith(b"\x7fELF") and ".so" not in path.name)
        path.chmod(0o755 if program and path.stat().st_mode & 0o111 else 0o644)


def write_deb(
    root: Path, *, version: str, arch: str, out: Path, date: str, compression: str = "xz"
) -> Path:
    """``out/edgefleet-agent_<version>_<arch>.deb`` from the staged ``root``.

    ``compression``: ``xz`` (the smallest download for a device; ~20 s here), ``gzip``
    (~7 s, for development builds) or ``none`` (~2 s, a .deb as large as the tree, for
    tests that only install it).
    """
    if compression not in COMPRESSION:
        raise BuildError(f"compression {compression!r} is not one of {sorted(COMPRESSION)}")
    check_version(version)
    doc = root / "usr/share/doc" / PACKAGE
    write_gz(doc / "changelog.gz", changelog(version, date).encode())
    (doc / "changelog.gz").chmod(0o644)
    debian = root / "DEBIAN"
    shutil.rmtree(debian, ignore_errors=True)
    debian.mkdir(mode=0o755)
    debian.chmod(0o755)
    installed = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    write(
        debian / "control", control(version=version, arch=arch, installed_kib=-(-installed // 1024))
    )
    write(debian / "conffiles", "/etc/edgefleet/agent.toml\n")
    write(debian / "md5sums", md5sums(root))
    for script in ("postinst", "prerm", "postrm"):
        write(debian / script, (HERE / script).read_text(), mode=0o755)
    out.mkdir(parents=True, exist_ok=True)
    deb = out / f"{PACKAGE}_{version.rsplit(':', maxsplit=1)[-1]}_{arch}.deb"
    run(
        [
            "dpkg-deb",
            "--root-owner-group",
            *COMPRESSION[compression],
            "--build",
            str(root),
            str(deb),
        ],
        step="dpkg-deb",
    )
    shutil.rmtree(debian)
    return deb


def md5sums(root: Path) -> str:
    """DEBIAN/md5sums: what ``dpkg --verify`` checks the installed files against."""
    lines = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and not path.is_symlink() and relative.parts[0] != "DEBIAN":
            lines.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {relative}\n")  # noqa: S324
    return "".join(lines)


def write(path: Path, text: str, *, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def write_gz(path: Path, data: bytes) -> None:
    """gzip -9n: no name or time in the header, so the build is reproducible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(data)


@dataclass(frozen=True)
class Built:
    deb: Path
    root: Path
    wheels: Path


def build(
    *, arch: str, version: str, out: Path, work: Path, cache: Path, compression: str = "xz"
) -> Built:
    """All steps: wheel, target wheels, staged tree, the .deb in ``out``."""
    machine_of(arch)
    check_version(version)
    wheel = build_wheel(work / "wheel")
    wheels = download_wheels(wheel, arch, cache)
    root = stage(wheel, wheels, arch, work / f"root-{arch}")
    date = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
    deb = write_deb(root, version=version, arch=arch, out=out, date=date, compression=compression)
    return Built(deb, root, wheels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHES), default="amd64")
    parser.add_argument("--version", default=None, help="Debian version (default: pyproject's)")
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="where the .deb goes")
    parser.add_argument(
        "--work", type=Path, default=None, help="scratch directory (default: <out>/deb-work)"
    )
    parser.add_argument(
        "--wheel-cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgefleet-deb",
        help="downloaded target wheels, kept between builds (default: %(default)s)",
    )
    parser.add_argument("--compression", choices=sorted(COMPRESSION), default="xz")
    args = parser.parse_args(argv)
    try:
        built = build(
            arch=args.arch,
            version=args.version or project_version(),
            out=args.out,
            work=args.work or args.out / "deb-work",
            cache=args.wheel_cache,
            compression=args.compression,
        )
    except BuildError as e:
        print(f"build.py: error: {e}", file=sys.stderr)
        return 1
    print(built.deb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
