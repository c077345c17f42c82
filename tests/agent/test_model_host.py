from __future__ import annotations

import threading

import numpy as np
import pytest

from edgefleet.agent.drift_monitor import DriftMonitor
from edgefleet.agent.metrics import InferenceMetrics
from edgefleet.agent.model_host import (
    ActiveModel,
    InputError,
    ModelHost,
    NoModelLoadedError,
    check_inputs,
)
from edgefleet.shared.drift import build_profile
from edgefleet.shared.messages import ModelRef
from edgefleet.shared.runtime import InferenceError, load_runtime
from edgefleet.shared.runtime.base import Tensors
from edgefleet.shared.tensors import TensorSpec
from edgefleet.simulators.models import TrainedModel

SPECS = [TensorSpec(name="input", dtype="float32", shape=[None, 13])]


def host_for(model: TrainedModel, version: str = "1") -> tuple[ModelHost, ActiveModel]:
    active = ActiveModel(load_runtime(model.path), ModelRef(name="wine", version=version))
    return ModelHost(InferenceMetrics(), active), active


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"x": [[0.0] * 13]}, "unknown inputs ['x']; the model takes ['input']"),
        ({}, "missing inputs ['input']"),
        ({"input": [[0.0] * 12]}, "must have shape ['N', 13], found [1, 12]"),
        ({"input": [0.0] * 13}, "must have shape ['N', 13], found [13]"),
        ({"input": [["a"] * 13]}, "must be float32, found str"),
        ({"input": [[0.0] * 13, [0.0] * 12]}, "rectangular"),
    ],
)
def test_inputs_that_do_not_fit_the_model_are_rejected_with_the_reason(
    inputs: dict[str, object], message: str
) -> None:
    with pytest.raises(InputError) as caught:
        check_inputs(SPECS, inputs)
    assert message in str(caught.value)


def test_integer_and_float64_inputs_are_converted_to_the_model_dtype() -> None:
    tensors = check_inputs(SPECS, {"input": [[1] * 13, [2.5] * 13]})
    assert tensors["input"].dtype == np.float32
    assert tensors["input"].shape == (2, 13)


def test_infer_matches_the_runtime_and_counts(wine_model: TrainedModel) -> None:
    host, active = host_for(wine_model)
    ref, outputs = host.infer({"input": wine_model.x_test[:5]})
    direct = active.runtime.predict({"input": wine_model.x_test[:5]})
    assert ref.version == "1"
    np.testing.assert_array_equal(outputs["label"], direct["label"])
    with pytest.raises(InputError):
        host.infer({"input": [[1.0]]})
    stats = host.metrics.interval()
    assert (stats.inferences, stats.errors) == (1, 0)  # a caller's bad input is not a model error


def test_no_model_loaded_is_its_own_error() -> None:
    with pytest.raises(NoModelLoadedError):
        ModelHost(InferenceMetrics()).infer({"input": [[0.0] * 13]})


def test_swapping_models_under_load_drops_no_request(wine_model: TrainedModel) -> None:
    host, _ = host_for(wine_model, "1")
    v2 = ActiveModel(load_runtime(wine_model.path), ModelRef(name="wine", version="2"))
    versions: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                ref, _ = host.infer({"input": wine_model.x_test[:1]})
                versions.append(ref.version)
            except BaseException as e:  # any failure fails the test
                failures.append(e)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(40):
        old = host.swap(v2 if i % 2 == 0 else host_for(wine_model, "1")[1])
        assert old is not None
    stop.set()
    for t in threads:
        t.join()
    assert not failures
    assert {"1", "2"} <= set(versions)
    assert host.metrics.interval().inferences == len(versions)


class _FailingRuntime:
    """A `ModelRuntime` (our interface) whose every run fails, as a broken model would."""

    runtime = "failing"
    inputs = SPECS
    outputs = [TensorSpec(name="probabilities", dtype="float32", shape=[None, 3])]

    def predict(self, inputs: Tensors) -> Tensors:
        raise InferenceError("the model crashed")

    def close(self) -> None:
        pass


def test_a_runtime_failure_is_counted_and_reported_to_an_observer_set_after_the_host() -> None:
    metrics = InferenceMetrics()
    host = ModelHost(metrics, ActiveModel(_FailingRuntime(), ModelRef(name="w", version="1")))
    seen: list[bool] = []
    metrics.observer = lambda ok, latency_ms: seen.append(ok)  # set after the path was built
    with pytest.raises(InferenceError, match="crashed"):
        host.infer({"input": np.zeros((1, 13), dtype=np.float32)})
    assert (metrics.interval().errors, seen) == (1, [False])


def test_each_model_version_folds_its_own_requests_into_its_own_monitor(
    wine_model: TrainedModel,
) -> None:
    runtime = load_runtime(wine_model.path)
    outputs = runtime.predict({"input": wine_model.x_test})
    profile = build_profile({"input": wine_model.x_test}, outputs)
    monitors: list[DriftMonitor] = []

    def monitor_for(model: ActiveModel) -> DriftMonitor:
        monitors.append(DriftMonitor(profile))
        return monitors[-1]

    seen: list[str] = []
    host = ModelHost(
        InferenceMetrics(),
        ActiveModel(runtime, ModelRef(name="wine", version="1")),
        drift=monitor_for,
        on_retired=lambda model, monitor: seen.append(model.ref.version),
    )
    for i in range(3):
        host.infer({"input": wine_model.x_test[i : i + 1]}, [f"r{i}"])
    host.swap(ActiveModel(load_runtime(wine_model.path), ModelRef(name="wine", version="2")))
    host.infer({"input": wine_model.x_test[:2]}, ["a", "b"])
    first, second = monitors
    window = first.close()
    assert window is not None
    assert window.count == 3
    window = second.close()
    assert window is not None
    assert window.count == 2
    assert seen == ["1"]
    assert host.metrics.interval().inferences == 4


def test_a_non_contiguous_or_integer_input_takes_the_checked_path(wine_model: TrainedModel) -> None:
    host, active = host_for(wine_model)
    rows = np.ascontiguousarray(wine_model.x_test[:2], dtype=np.float32)
    expected = active.runtime.predict({"input": rows})["probabilities"]
    wide = np.zeros((2, 26), dtype=np.float32)
    wide[:, ::2] = rows
    _, strided = host.infer({"input": wide[:, ::2]})
    np.testing.assert_array_equal(strided["probabilities"], expected)
    _, from_ints = host.infer({"input": np.ones((2, 13), dtype=np.int64)})
    assert from_ints["probabilities"].shape == (2, 3)
    with pytest.raises(InputError, match="must be float32, found complex128"):
        host.infer({"input": np.ones((1, 13), dtype=np.complex128)})


def test_a_float32_array_of_the_wrong_shape_is_the_callers_error_not_the_models(
    wine_model: TrainedModel,
) -> None:
    """The fast path leaves the shape to the runtime, then names what does not fit."""
    host, _ = host_for(wine_model)
    with pytest.raises(InputError, match=r"must have shape \['N', 13\], found \[1, 12\]") as caught:
        host.infer({"input": np.zeros((1, 12), dtype=np.float32)}, ["r1"])
    error = caught.value  # the runtime's own message is not chained to it
    assert error.__context__ is None or error.__suppress_context__
    stats = host.metrics.interval()
    assert (stats.inferences, stats.errors) == (0, 0)


def test_a_failing_runtime_given_a_bad_input_reports_the_input_and_counts_nothing() -> None:
    metrics = InferenceMetrics()
    host = ModelHost(metrics, ActiveModel(_FailingRuntime(), ModelRef(name="w", version="1")))
    seen: list[bool] = []
    metrics.observer = lambda ok, latency_ms: seen.append(ok)
    with pytest.raises(InputError, match="must have shape"):
        host.infer({"input": np.zeros((2, 13, 1), dtype=np.float32)})
    assert (metrics.interval().errors, seen) == (0, [])


def test_a_byte_swapped_float32_array_is_converted_not_misread(wine_model: TrainedModel) -> None:
    """Equal to float32 but not native order: the runtime would read the bytes as they lie."""
    host, active = host_for(wine_model)
    rows = np.ascontiguousarray(wine_model.x_test[:3], dtype=np.float32)
    expected = active.runtime.predict({"input": rows})["probabilities"]
    _, outputs = host.infer({"input": rows.astype(">f4")})
    np.testing.assert_array_equal(outputs["probabilities"], expected)


def test_fast_and_checked_requests_fold_into_one_window_with_their_labels(
    wine_model: TrainedModel,
) -> None:
    runtime = load_runtime(wine_model.path)
    outputs = runtime.predict({"input": wine_model.x_test})
    profile = build_profile(
        {"input": wine_model.x_test}, outputs, labels=outputs["label"].astype(np.int64)
    )
    monitor = DriftMonitor(profile)
    host = ModelHost(
        InferenceMetrics(),
        ActiveModel(runtime, ModelRef(name="wine", version="1")),
        drift=lambda model: monitor,
    )
    rows = np.ascontiguousarray(wine_model.x_test[:6], dtype=np.float32)
    for i in range(3):  # ndarrays of the model's dtype: the fast path
        host.infer({"input": rows[i : i + 1]}, (f"fast{i}",))
    for i in range(3, 6):  # nested lists: the checked path
        host.infer({"input": rows[i : i + 1].tolist()}, [f"checked{i}"])
    labels = outputs["label"]
    for i in range(6):
        rid = f"fast{i}" if i < 3 else f"checked{i}"
        assert monitor.record_label(rid, int(labels[i]))
    window = monitor.close()
    assert window is not None
    assert (window.count, window.labelled) == (6, 6)
    assert window.classification is not None
    confusion = np.array(window.classification.confusion)
    assert np.trace(confusion) == 6


class _AnyBatchRuntime:
    """A runtime declaring batch 1 that, like a TFLite interpreter, resizes to any batch."""

    runtime = "any-batch"
    inputs = [TensorSpec(name="input", dtype="float32", shape=[1, 13])]
    outputs = [TensorSpec(name="sum", dtype="float32", shape=[1])]

    def predict(self, inputs: Tensors) -> Tensors:
        return {"sum": np.asarray(inputs["input"]).sum(axis=1)}

    def close(self) -> None:
        pass


def test_a_declared_batch_size_is_enforced_by_the_host() -> None:
    host = ModelHost(
        InferenceMetrics(), ActiveModel(_AnyBatchRuntime(), ModelRef(name="w", version="1"))
    )
    _, outputs = host.infer({"input": np.ones((1, 13), dtype=np.float32)})
    assert outputs["sum"].tolist() == [13.0]
    with pytest.raises(InputError, match=r"must have shape \[1, 13\], found \[2, 13\]"):
        host.infer({"input": np.ones((2, 13), dtype=np.float32)})
