"""Real model packages for the update tests: wine ONNX models, manifests, zip artifacts."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import onnx

from edgefleet.agent.update.types import DesiredReceived, UpdateTarget
from edgefleet.shared.manifest import MANIFEST_FILE, ModelManifest, ProbationBudget
from edgefleet.shared.tensors import TensorSpec

MODEL_FILE = "model.onnx"
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Package:
    """One model version: the files of its package and the artifact that carries them."""

    version: str
    files: dict[str, bytes]
    artifact: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.artifact).hexdigest()

    def fill(self, directory: Path) -> None:
        for name, data in self.files.items():
            (directory / name).write_bytes(data)

    def target(self, seq: int, *, rollback: bool = False) -> UpdateTarget:
        return UpdateTarget(
            desired_seq=seq,
            name="wine",
            version=self.version,
            sha256=self.sha256,
            length=len(self.artifact),
            rollout_id="r1",
            rollback=rollback,
        )

    def offer(self, seq: int, *, rollback: bool = False) -> DesiredReceived:
        """A desired state for this version whose envelope opened (valid until 2100)."""
        return desired(self.target(seq, rollback=rollback))


def desired(target: UpdateTarget, *, expires_at: datetime = FAR_FUTURE) -> DesiredReceived:
    """``target`` as the wiring hands it over; the envelope's digest is made up from it."""
    envelope = f"{target.model_dump_json()}:{expires_at.isoformat()}".encode()
    return DesiredReceived(
        target=target,
        expires_at=expires_at,
        envelope_sha256=hashlib.sha256(envelope).hexdigest(),
    )


def make_package(model_path: Path, version: str, budget: ProbationBudget | None = None) -> Package:
    """A package of the real wine ONNX model, made distinct per version via doc_string."""
    model = onnx.load(str(model_path))
    model.doc_string = f"wine {version}"
    data = model.SerializeToString()
    manifest = ModelManifest(
        name="wine",
        version=version,
        runtime="onnx",
        model_file=MODEL_FILE,
        inputs=[TensorSpec(name="input", dtype="float32", shape=[None, 13])],
        outputs=[
            TensorSpec(name="label", dtype="int64", shape=[None]),
            TensorSpec(name="probabilities", dtype="float32", shape=[None, 3]),
        ],
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        created_at=datetime(2024, 1, 1, tzinfo=UTC),
        probation=budget or ProbationBudget(min_inferences=5, duration_s=60),
    )
    files = {
        MANIFEST_FILE: json.dumps(manifest.model_dump(mode="json", by_alias=True)).encode(),
        MODEL_FILE: data,
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, content in files.items():
            z.writestr(name, content)
    return Package(version=version, files=files, artifact=buffer.getvalue())
