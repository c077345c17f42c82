"""Train the small test models and write them as TFLite (float32, int8) and ONNX (float32).

Run from the repository root, with TensorFlow installed (``pip install
'edgefleet[tflite-build]'``; nothing else in edgefleet imports TensorFlow)::

    python -m simulators.tflite_models.generate            # writes next to this file

Seeds are fixed, so a rerun with the same library versions on the same kind of CPU
gives the same files; ``manifest.json`` records the versions and each file's sha256.

Two tasks, on data sets that scikit-learn ships (nothing is downloaded):

- wine: 13 raw float measurements -> 3 class probabilities, a Keras MLP whose first
  layer is a Normalization layer, so the model takes the raw readings.
- digits: an 8x8x1 image (pixels 0..16) -> 10 class probabilities, a two-conv CNN.

Quantization decisions (see README.md):

- ``digits_cnn_int8.tflite`` is full-integer with int8 input and output.
- ``wine_int8.tflite`` keeps the input standardisation (SUB, MUL) in float and runs
  everything after it in int8, with float input and output. A full-integer model must
  quantize the raw input with one scale for all 13 features; proline reaches ~1700
  while hue stays under 2, so the scale (~6.6) erases most features and held-out
  accuracy fell to 0.57 when we tried.
- The ONNX files are written node by node with ``onnx.helper`` from the trained Keras
  weights (no tf2onnx), then checked against Keras to 1e-4.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgefleet.shared.tensors import TensorSpec
from edgefleet.simulators.tflite_models.catalog import (
    MODEL_DIR,
    Manifest,
    ModelFile,
    ModelTensor,
    QuantParams,
    sha256_of,
)
from edgefleet.simulators.tflite_models.datasets import Split, digits_split, wine_split

logger = logging.getLogger(__name__)

SEED = 0
ONNX_OPSET = 17
# Keras' Normalization divides by max(sqrt(variance), epsilon); the ONNX copy must agree.
KERAS_EPSILON = 1e-7
ONNX_MATCH_TOLERANCE = 1e-4


def _tf() -> Any:
    import tensorflow as tf  # type: ignore[import-untyped,import-not-found,unused-ignore]

    return tf


def _seed_everything() -> None:
    import keras  # type: ignore[import-untyped,import-not-found,unused-ignore]

    keras.utils.set_random_seed(SEED)
    _tf().config.experimental.enable_op_determinism()


def train_wine(split: Split) -> Any:
    """A 13 -> 16 -> 3 MLP with a Normalization layer adapted on the training rows."""
    import keras  # type: ignore[import-untyped,import-not-found,unused-ignore]

    norm = keras.layers.Normalization(name="standardize")
    norm.adapt(split.x_train)
    inputs = keras.Input((13,), name="input")
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(norm(inputs))
    outputs = keras.layers.Dense(3, activation="softmax", name="probabilities")(hidden)
    model = keras.Model(inputs, outputs, name="wine_mlp")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(split.x_train, split.y_train, epochs=150, batch_size=16, verbose=0, shuffle=True)
    return model


def train_digits(split: Split) -> Any:
    """8x8x1 -> conv(8) -> conv(16, stride 2) -> dense(10); pixels rescaled from 0..16."""
    import keras  # type: ignore[import-untyped,import-not-found,unused-ignore]

    inputs = keras.Input((8, 8, 1), name="input")
    x = keras.layers.Rescaling(1.0 / 16.0, name="rescale")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="digits_cnn")
    model.compile(optimizer=keras.optimizers.Adam(0.005), loss="sparse_categorical_crossentropy")
    model.fit(split.x_train, split.y_train, epochs=20, batch_size=32, verbose=0, shuffle=True)
    return model


def _saved_model(model: Any, input_shape: tuple[int, ...], directory: Path) -> Path:
    """Export with one signature: ``input`` -> ``probabilities``, any batch size."""
    import keras  # type: ignore[import-untyped,import-not-found,unused-ignore]

    tf = _tf()

    def serve(x: Any) -> dict[str, Any]:
        return {"probabilities": model(x, training=False)}

    # Keras 3's ExportArchive freezes the variables properly for the TFLite converter
    # (a hand-made tf.Module leaves READ_VARIABLE ops that break int8 calibration).
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=serve,
        input_signature=[tf.TensorSpec([None, *input_shape], tf.float32, name="input")],
    )
    archive.write_out(str(directory), verbose=False)
    return directory


def _representative(x_train: NDArray[np.float32]) -> Callable[[], Iterator[list[Any]]]:
    def rows() -> Iterator[list[Any]]:
        for row in x_train:
            yield [row[np.newaxis, ...]]

    return rows


def tflite_float(saved: Path) -> bytes:
    """Plain float32 conversion."""
    converter = _tf().lite.TFLiteConverter.from_saved_model(str(saved))
    result: bytes = converter.convert()
    return result


def tflite_full_int8(saved: Path, x_train: NDArray[np.float32]) -> bytes:
    """Full-integer int8, int8 input and output, calibrated on the training rows."""
    tf = _tf()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative(x_train)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    result: bytes = converter.convert()
    return result


def tflite_int8_float_boundary(saved: Path, x_train: NDArray[np.float32]) -> bytes:
    """Int8 everywhere except the input standardisation (SUB, MUL), which stays float."""
    tf = _tf()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative(x_train)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter,
        debug_dataset=_representative(x_train),
        debug_options=tf.lite.experimental.QuantizationDebugOptions(
            denylisted_ops=["SUB", "MUL", "DIV"]
        ),
    )
    result: bytes = debugger.get_nondebug_quantized_model()
    return result


def onnx_wine(model: Any) -> bytes:
    """The wine MLP as an ONNX graph: Sub, Div, MatMul+Add, Relu, MatMul+Add, Softmax.

    MatMul+Add rather than Gemm: onnxruntime's dynamic quantization handles MatMul only.
    """
    from onnx import TensorProto, helper, numpy_helper

    norm = model.get_layer("standardize")
    mean = np.asarray(norm.mean, dtype=np.float32).reshape(1, -1)
    std = np.maximum(np.sqrt(np.asarray(norm.variance, dtype=np.float32)), KERAS_EPSILON)
    w1, b1 = (np.asarray(v, dtype=np.float32) for v in model.get_layer("hidden").get_weights())
    w2, b2 = (
        np.asarray(v, dtype=np.float32) for v in model.get_layer("probabilities").get_weights()
    )
    inits = [
        numpy_helper.from_array(mean, "mean"),
        numpy_helper.from_array(std.reshape(1, -1).astype(np.float32), "std"),
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(b2, "b2"),
    ]
    nodes = [
        helper.make_node("Sub", ["input", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["standardized"]),
        helper.make_node("MatMul", ["standardized", "w1"], ["h_mm"]),
        helper.make_node("Add", ["h_mm", "b1"], ["h_pre"]),
        helper.make_node("Relu", ["h_pre"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["logits_mm"]),
        helper.make_node("Add", ["logits_mm", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "wine_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 13])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    return _finish_onnx(graph)


def onnx_digits(model: Any) -> bytes:
    """The digits CNN as ONNX, NHWC input like the TFLite file, NCHW convolutions inside."""
    from onnx import TensorProto, helper, numpy_helper

    def conv_weights(name: str) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        kernel, bias = model.get_layer(name).get_weights()
        # Keras kernels are (kh, kw, in, out); ONNX wants (out, in, kh, kw).
        return (
            np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)), dtype=np.float32),
            np.asarray(bias, dtype=np.float32),
        )

    k1, c1 = conv_weights("conv1")
    k2, c2 = conv_weights("conv2")
    wd, bd = (
        np.asarray(v, dtype=np.float32) for v in model.get_layer("probabilities").get_weights()
    )
    inits = [
        numpy_helper.from_array(np.array(1.0 / 16.0, dtype=np.float32), "rescale"),
        numpy_helper.from_array(k1, "k1"),
        numpy_helper.from_array(c1, "c1"),
        numpy_helper.from_array(k2, "k2"),
        numpy_helper.from_array(c2, "c2"),
        numpy_helper.from_array(wd, "wd"),
        numpy_helper.from_array(bd, "bd"),
    ]
    nodes = [
        helper.make_node("Mul", ["input", "rescale"], ["scaled"]),
        helper.make_node("Transpose", ["scaled"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "Conv", ["nchw", "k1", "c1"], ["a1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["a1"], ["r1"]),
        # TF "same" with stride 2 on 8x8 pads only at the end: (0, 0) before, (1, 1) after.
        helper.make_node(
            "Conv",
            ["r1", "k2", "c2"],
            ["a2"],
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[0, 0, 1, 1],
        ),
        helper.make_node("Relu", ["a2"], ["r2"]),
        # Keras flattens NHWC, so go back to that order before Flatten.
        helper.make_node("Transpose", ["r2"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Flatten", ["nhwc"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "wd"], ["logits_mm"]),
        helper.make_node("Add", ["logits_mm", "bd"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8, 8, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return _finish_onnx(graph)


def _finish_onnx(graph: Any) -> bytes:
    import onnx
    from onnx import helper

    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="edgefleet-generate",
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    data: bytes = model.SerializeToString()
    return data


def _check_onnx_matches_keras(onnx_bytes: bytes, model: Any, x: NDArray[np.float32]) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"input": x})[0]
    want = model.predict(x, verbose=0)
    diff = float(np.max(np.abs(got - want)))
    if diff > ONNX_MATCH_TOLERANCE:
        raise RuntimeError(
            f"{model.name}: ONNX copy differs from Keras by {diff:.2e}, "
            f"expected at most {ONNX_MATCH_TOLERANCE:.0e}"
        )
    logger.info("%s: ONNX matches Keras (max abs diff %.2e)", model.name, diff)


def _raw_tensors(path: Path) -> tuple[list[ModelTensor], list[ModelTensor]]:
    """Tensor specs as stored in the file (int8 stays int8), with quantization."""
    if path.suffix == ".onnx":
        from edgefleet.shared.runtime import load_runtime

        runtime = load_runtime(path)
        ins = [ModelTensor(**s.model_dump()) for s in runtime.inputs]
        outs = [ModelTensor(**s.model_dump()) for s in runtime.outputs]
        runtime.close()
        return ins, outs
    from edgefleet.shared.runtime import RuntimeOptions
    from edgefleet.shared.runtime.tflite import TfliteRuntime

    stored = TfliteRuntime(path, RuntimeOptions(), raw=True)
    quant = stored.quantization

    def tensor(spec: TensorSpec) -> ModelTensor:
        q = quant.get(spec.name)
        params = QuantParams(scale=q.scale, zero_point=q.zero_point) if q else None
        return ModelTensor(**spec.model_dump(), quantization=params)

    result = [tensor(s) for s in stored.inputs], [tensor(s) for s in stored.outputs]
    stored.close()
    return result


def _accuracy(path: Path, split: Split) -> float:
    from edgefleet.shared.runtime import load_runtime

    runtime = load_runtime(path)
    probabilities = runtime.predict({"input": split.x_test})["probabilities"]
    runtime.close()
    return float(np.mean(np.argmax(probabilities, axis=1) == split.y_test))


def generate(out_dir: Path) -> Manifest:
    """Train both models, write every file and ``manifest.json`` into ``out_dir``."""
    tf = _tf()
    _seed_everything()
    out_dir.mkdir(parents=True, exist_ok=True)
    entries: list[ModelFile] = []
    tasks: list[tuple[str, str, Split, Callable[[Split], Any], Callable[[Any], bytes]]] = [
        ("wine", "wine", wine_split(), train_wine, onnx_wine),
        ("digits", "digits_cnn", digits_split(), train_digits, onnx_digits),
    ]
    for task, stem, split, train, to_onnx in tasks:
        model = train(split)
        onnx_bytes = to_onnx(model)
        _check_onnx_matches_keras(onnx_bytes, model, split.x_test)
        with tempfile.TemporaryDirectory() as tmp:
            saved = _saved_model(model, split.x_train.shape[1:], Path(tmp) / "saved")
            if task == "wine":
                int8_bytes = tflite_int8_float_boundary(saved, split.x_train)
                int8_notes = (
                    "int8 weights and activations; the input standardisation stays float "
                    "so float32 in/out (see README: one input scale cannot fit raw wine "
                    "features)"
                )
            else:
                int8_bytes = tflite_full_int8(saved, split.x_train)
                int8_notes = "full-integer int8, int8 input and output"
            files = {
                (f"{stem}_float.tflite", "tflite", "float32", ""): tflite_float(saved),
                (f"{stem}_int8.tflite", "tflite", "int8", int8_notes): int8_bytes,
                (f"{stem}_float.onnx", "onnx", "float32", "written from the Keras weights"): (
                    onnx_bytes
                ),
            }
        for (name, fmt, precision, notes), data in files.items():
            path = out_dir / name
            path.write_bytes(data)
            inputs, outputs = _raw_tensors(path)
            entries.append(
                ModelFile(
                    file=name,
                    task=task,  # type: ignore[arg-type]
                    format=fmt,  # type: ignore[arg-type]
                    precision=precision,  # type: ignore[arg-type]
                    sha256=sha256_of(path),
                    size_bytes=len(data),
                    inputs=inputs,
                    outputs=outputs,
                    heldout_accuracy=_accuracy(path, split),
                    heldout_rows=len(split.y_test),
                    notes=notes,
                )
            )
            logger.info(
                "%s: %d bytes, held-out accuracy %.3f",
                name,
                len(data),
                entries[-1].heldout_accuracy,
            )
    manifest = Manifest(
        generator="simulators/tflite_models/generate.py",
        tensorflow=str(tf.__version__),
        seed=SEED,
        models=entries,
    )
    (out_dir / "manifest.json").write_text(
        json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8"
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--out DIR`` (default: this directory)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifest = generate(args.out)
    for entry in manifest.models:
        print(f"{entry.file:24} {entry.size_bytes:7d} B  accuracy {entry.heldout_accuracy:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
