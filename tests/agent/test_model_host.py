from __future__ import annotations

import threading

import numpy as np
import pytest

from agent.metrics import InferenceMetrics
from agent.model_host import ActiveModel, InputError, ModelHost, NoModelLoadedError, check_inputs
from agent.runtime import load_runtime
from shared.messages import ModelRef
from shared.tensors import TensorSpec
from simulators.models import TrainedModel

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
