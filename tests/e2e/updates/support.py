"""The fleet side of the update end-to-end tests, for real: packages, TUF, director, MQTT.

`Rig` is one fleet in miniature: a TUF image repository (`edgefleet.fleet.repository`) with fresh
keys, served over HTTP by `tests.shared.signing.repo_server`, a director key signing desired
states, and a plain paho client publishing them retained on a device's desired topic.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import paho.mqtt.client as mqtt
from onnx import numpy_helper
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent.config import AgentConfig
from edgefleet.fleet.repository import ImageRepository
from edgefleet.shared.manifest import GOLDEN_FILE, MANIFEST_FILE, ModelManifest, ProbationBudget
from edgefleet.shared.modeltools.builder import build_package
from edgefleet.shared.package.format import manifest_bytes
from edgefleet.shared.signing import keys
from edgefleet.shared.signing.bundle import write_bundle
from edgefleet.shared.signing.director import (
    DesiredBody,
    DesiredTarget,
    SignedDesiredState,
    sign_desired,
)
from edgefleet.shared.signing.tufapi import CryptoSigner
from tests.shared.signing.repo_server import RepoServer
from tests.support.agent import agent_config
from tests.support.mosquitto import MosquittoBroker

FAST_PROBATION = ProbationBudget(min_inferences=5, duration_s=0.5)


@dataclass(frozen=True)
class Pkg:
    """A model package file and what a TUF target and a desired state say about it."""

    path: Path
    version: str

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def length(self) -> int:
        return self.path.stat().st_size

    @property
    def url_path(self) -> str:
        return f"/targets/{self.sha256}.{self.name}"


def build(
    model: Path, version: str, out_dir: Path, probation: ProbationBudget = FAST_PROBATION
) -> Pkg:
    """A real package of ``model`` built by `build_package` (golden samples included)."""
    path = build_package(
        model, name="wine", version=version, out_dir=out_dir, golden_count=8, probation=probation
    )
    return Pkg(path, version)


def _members(pkg: Pkg) -> dict[str, bytes]:
    with tarfile.open(pkg.path) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


def repackage(
    pkg: Pkg,
    out_dir: Path,
    *,
    version: str,
    model_bytes: bytes | None = None,
    golden_from: Pkg | None = None,
    probation: ProbationBudget | None = None,
) -> Pkg:
    """A consistent package (hashes and sizes right) made from ``pkg`` with parts replaced.

    ``model_bytes`` swaps the model file (e.g. garbage, or another model whose outputs
    differ from the golden ones); ``golden_from`` takes the golden samples of another
    package.
    """
    members = _members(pkg)
    manifest = ModelManifest.model_validate_json(members.pop(MANIFEST_FILE))
    update: dict[str, Any] = {"version": version}
    if model_bytes is not None:
        members[manifest.model_file] = model_bytes
        update["sha256"] = hashlib.sha256(model_bytes).hexdigest()
        update["size_bytes"] = len(model_bytes)
    if golden_from is not None and manifest.golden is not None:
        golden = _members(golden_from)[GOLDEN_FILE]
        members[GOLDEN_FILE] = golden
        update["golden"] = manifest.golden.model_copy(
            update={"sha256": hashlib.sha256(golden).hexdigest()}
        )
    if probation is not None:
        update["probation"] = probation
    members[MANIFEST_FILE] = manifest_bytes(manifest.model_copy(update=update))
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"wine-{version}.efpkg"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(members[name]))
    out.write_bytes(buffer.getvalue())
    return Pkg(out, version)


def padded_model(model: Path, out: Path, pad_bytes: int) -> Path:
    """``model`` with an unused random initializer of ``pad_bytes`` (a big, valid model)."""
    proto = onnx.load(str(model))
    pad = np.random.default_rng(0).integers(0, 255, size=pad_bytes, dtype=np.uint8)
    proto.graph.initializer.append(numpy_helper.from_array(pad, name="edgefleet_pad"))
    out.write_bytes(proto.SerializeToString())
    return out


class Rig:
    """A TUF repository over HTTP, a director key and an MQTT publisher for desired states."""

    def __init__(self, root: Path, broker: MosquittoBroker) -> None:
        self.root = root
        self.broker = broker
        self.signers: dict[str, CryptoSigner] = {n: keys.generate_signer() for n in keys.ALL_KEYS}
        self.repo = ImageRepository.create(root / "repo", self.signers)
        self.server = RepoServer(root / "repo")
        self.trust_dir = root / "trust"
        write_bundle(
            self.trust_dir,
            self.repo.metadata_bytes("root", 1),
            [self.signers["director"].public_key],
        )
        self._client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self._client.connect("127.0.0.1", broker.port, keepalive=10)
        self._client.loop_start()

    def update_config(self, **policy: float) -> dict[str, Any]:
        """The ``[update]`` table of an agent process that updates from this rig, with a
        fast tick; ``policy`` fills ``[update.policy]``."""
        section: dict[str, Any] = {
            "enabled": True,
            "repository_url": self.server.url,
            "trust_dir": str(self.trust_dir),
            "tick_s": 0.05,
        }
        if policy:
            section["policy"] = policy
        return section

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
        self.server.stop()

    def add(self, pkg: Pkg) -> None:
        """Approve ``pkg`` with the release key (a TUF target named after its file)."""
        self.repo.add_target(pkg.path, custom={"name": "wine", "version": pkg.version})

    def sign(
        self,
        device_id: str,
        pkg: Pkg,
        seq: int,
        *,
        rollback: bool = False,
        expires_in_s: float = 3600,
        signer: CryptoSigner | None = None,
        name: str | None = None,
        sha256: str | None = None,
        length: int | None = None,
    ) -> SignedDesiredState:
        now = datetime.now(UTC)
        body = DesiredBody(
            device_id=device_id,
            seq=seq,
            target=DesiredTarget(
                name=name or pkg.name,
                sha256=sha256 or pkg.sha256,
                length=pkg.length if length is None else length,
                version=pkg.version,
            ),
            expires_at=now + timedelta(seconds=expires_in_s),
            issued_at=now - timedelta(seconds=max(0.0, -expires_in_s) + 1),
            rollout_id=f"rollout-{seq}",
            rollback=rollback,
        )
        return sign_desired(body, signer or self.signers["director"])

    def publish(self, device_id: str, envelope: SignedDesiredState | bytes) -> None:
        payload = envelope if isinstance(envelope, bytes) else envelope.to_bytes()
        info = self._client.publish(
            f"edgefleet/v1/devices/{device_id}/desired", payload, qos=1, retain=True
        )
        info.wait_for_publish(5)

    def config(
        self, tmp_path: Path, device_id: str, factory: Pkg | None, **update: Any
    ) -> AgentConfig:
        policy = {"retry_base_s": 0.05, "retry_max_s": 0.2, **update.pop("policy", {})}
        model = (
            {"path": str(factory.path), "name": "wine", "version": factory.version}
            if factory
            else {}
        )
        return agent_config(
            tmp_path,
            self.broker,
            device_id,
            model=model,
            update={
                "enabled": True,
                "repository_url": self.server.url,
                "trust_dir": str(self.trust_dir),
                "tick_s": 0.05,
                "policy": policy,
                **update,
            },
        )


def event_docs(received: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(r.payload) for r in received if r.topic.endswith("/events")]
