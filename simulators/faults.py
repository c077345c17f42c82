"""Faults a simulated device can suffer, injected into the REAL agent at its own seams.

Model faults go through the agent's ``runtime_loader`` seam
(`edgefleet.agent.update.ports.RuntimeLoader`):
`FaultyLoader` loads the model with `edgefleet.shared.runtime.load_runtime` and, for the model
versions a fault names, wraps the runtime or refuses it. The agent's own golden check,
probation and rollback then react for real:

- ``golden_fail``: outputs are perturbed, so the package's golden samples fail;
- ``slow``: every prediction sleeps ``slow_ms`` first (probation's latency budget);
- ``crash``: loading raises `RuntimeLoadError` (activation fails, the agent rolls back).

Connection faults are carried out by `edgefleet.simulators.fleet.SimulatedFleet`:

- ``offline``: the agent is stopped and started again on a schedule (a device switched
  off: it publishes ``online: false`` and later converges from the retained desired state);
- ``flaky``: the device's MQTT connection goes through `edgefleet.simulators.proxy.FlakyProxy`,
  which drops it at random (no clean DISCONNECT: the broker publishes the will).

A model fault applies to the versions in ``versions``; empty means every model except
the factory version the device shipped with (the update is the bad one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from edgefleet.agent.update.adapters import read_manifest
from edgefleet.agent.update.ports import RuntimeLoader
from edgefleet.shared.runtime import ModelRuntime, RuntimeLoadError, RuntimeOptions, load_runtime
from edgefleet.shared.runtime.base import Tensors
from edgefleet.shared.signing.errors import Malformed
from edgefleet.shared.tensors import TensorSpec


class FaultKind(StrEnum):
    GOLDEN_FAIL = "golden_fail"
    SLOW = "slow"
    CRASH = "crash"
    OFFLINE = "offline"
    FLAKY = "flaky"


MODEL_FAULTS = frozenset({FaultKind.GOLDEN_FAIL, FaultKind.SLOW, FaultKind.CRASH})


@dataclass(frozen=True)
class Fault:
    """One fault of a device profile; see the module docstring for what each kind does.

    ``slow_ms`` is the added latency of ``slow``; ``period_s`` the mean time between
    drops (``flaky``) or between switch-offs (``offline``); ``down_s`` how long an
    ``offline`` device stays off.
    """

    kind: FaultKind
    versions: tuple[str, ...] = ()
    slow_ms: float = 300.0
    period_s: float = 30.0
    down_s: float = 10.0

    def affects(self, version: str, factory_version: str) -> bool:
        """Whether this model fault applies to a model of ``version``."""
        if self.versions:
            return version in self.versions
        return version != factory_version


class _WrappedRuntime:
    """A runtime that passes everything to ``inner``; subclasses change `predict`."""

    def __init__(self, inner: ModelRuntime) -> None:
        self._inner = inner
        self.runtime = inner.runtime

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inner.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._inner.outputs

    def predict(self, inputs: Tensors) -> Tensors:
        return self._inner.predict(inputs)

    def close(self) -> None:
        self._inner.close()


class PerturbedRuntime(_WrappedRuntime):
    """A runtime whose outputs are wrong: floats shifted, integer labels moved by one."""

    def predict(self, inputs: Tensors) -> Tensors:
        out: Tensors = {}
        for name, value in self._inner.predict(inputs).items():
            if np.issubdtype(value.dtype, np.floating):
                out[name] = np.add(value, 0.5).astype(value.dtype)
            elif np.issubdtype(value.dtype, np.integer):
                out[name] = np.add(value, 1).astype(value.dtype)
            else:
                out[name] = value
        return out


class SlowRuntime(_WrappedRuntime):
    """A runtime that sleeps ``delay_s`` before each prediction (an overloaded device)."""

    def __init__(self, inner: ModelRuntime, delay_s: float) -> None:
        super().__init__(inner)
        self._delay_s = delay_s

    def predict(self, inputs: Tensors) -> Tensors:
        time.sleep(self._delay_s)
        return self._inner.predict(inputs)


class FaultyLoader:
    """A `RuntimeLoader` that injects the model faults of one device profile."""

    def __init__(
        self,
        faults: tuple[Fault, ...],
        *,
        factory_version: str,
        inner: RuntimeLoader = load_runtime,
    ) -> None:
        self._faults = tuple(f for f in faults if f.kind in MODEL_FAULTS)
        self._factory_version = factory_version
        self._inner = inner

    def __call__(
        self, path: Path, *, runtime: str | None = None, options: RuntimeOptions | None = None
    ) -> ModelRuntime:
        """Load ``path``, then apply the faults for its version.

        Raises `RuntimeLoadError` for a real load failure and for an injected ``crash``.
        """
        version = _version_of(path)
        # A bare model file (no manifest beside it) is the factory model served as is.
        active = [f for f in self._faults if version and f.affects(version, self._factory_version)]
        if any(f.kind is FaultKind.CRASH for f in active):
            raise RuntimeLoadError(f"{path}: injected crash on activation of version {version}")
        loaded = self._inner(path, runtime=runtime, options=options)
        for fault in active:
            if fault.kind is FaultKind.GOLDEN_FAIL:
                loaded = PerturbedRuntime(loaded)
            elif fault.kind is FaultKind.SLOW:
                loaded = SlowRuntime(loaded, fault.slow_ms / 1000.0)
        return loaded


def _version_of(path: Path) -> str:
    """The version in the manifest beside ``path``; "" for a bare model without one."""
    try:
        return str(read_manifest(path.parent).version)
    except Malformed:
        return ""


def loader_for(faults: tuple[Fault, ...], factory_version: str) -> RuntimeLoader:
    """The runtime loader of a device with ``faults``: the real one when none is a model fault."""
    if not any(f.kind in MODEL_FAULTS for f in faults):
        return load_runtime
    return FaultyLoader(faults, factory_version=factory_version)
