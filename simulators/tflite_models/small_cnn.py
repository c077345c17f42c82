"""A small image CNN of edge-device size, written as ONNX on the spot (nothing committed).

``[N, 32, 32, 3]`` float32 NHWC images in 0..1 -> ``probabilities`` ``[N, 10]``:
Transpose to NCHW, four 3x3 convolutions (16, 32, 64, 64 channels, ReLU, the first
three each followed by 2x2 max pooling), global average pooling, a dense layer, softmax.
About 61,000 parameters (~240 KB of float32), ~3.4 M multiply-adds per image: the size
class of the keyword-spotting and tiny-vision CNNs that run on a Raspberry Pi, and a
thousand times the work of the 8x8 digits CNN.

The convolutions have seeded He-initialised weights, not trained ones; only the dense
head is fitted (ridge least squares on the pooled features of scikit-learn's digits,
upsampled to 32x32 and repeated over three channels), so the outputs do separate the
digits: 95% right on the 1,797 images it was fitted on (no held-out figure; it is a
timing model, not a classifier to ship). For the agent-overhead benchmark the
weights do not matter: the graph runs the same kernels on the same shapes whatever the
values (no data-dependent control flow, activations of order one, so no denormals), so
the model's time, and what the agent adds to it, are those of a trained network of the
same architecture.

Run ``python -m simulators.tflite_models.small_cnn OUT.onnx`` to write the model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

SIDE = 32
CHANNELS = 3
CLASSES = 10
CONV_CHANNELS = (16, 32, 64, 64)
ONNX_OPSET = 17
SEED = 0
RIDGE = 1e-3


def digit_images() -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """scikit-learn's 8x8 digits as ``[N, 32, 32, 3]`` float32 in 0..1, and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    grey = data.images.astype(np.float32) / np.float32(16.0)
    scale = SIDE // grey.shape[1]
    big = grey.repeat(scale, axis=1).repeat(scale, axis=2)
    images = np.repeat(big[..., np.newaxis], CHANNELS, axis=3)
    return np.ascontiguousarray(images), data.target.astype(np.int64)


def _conv_weights(
    rng: np.random.Generator,
) -> list[tuple[NDArray[np.float32], NDArray[np.float32]]]:
    weights = []
    fan_in_channels = CHANNELS
    for out_channels in CONV_CHANNELS:
        std = np.sqrt(2.0 / (fan_in_channels * 9))
        kernel = rng.normal(0.0, std, size=(out_channels, fan_in_channels, 3, 3))
        weights.append((kernel.astype(np.float32), np.zeros(out_channels, dtype=np.float32)))
        fan_in_channels = out_channels
    return weights


def _graph(
    convs: list[tuple[NDArray[np.float32], NDArray[np.float32]]],
    head: tuple[NDArray[np.float32], NDArray[np.float32]] | None,
) -> onnx.ModelProto:
    """The CNN; without ``head`` it outputs the pooled features ``features [N, 64]``."""
    nodes = [helper.make_node("Transpose", ["input"], ["x0"], perm=[0, 3, 1, 2])]
    initializers = []
    current = "x0"
    for i, (kernel, bias) in enumerate(convs):
        initializers += [
            numpy_helper.from_array(kernel, f"conv{i}_w"),
            numpy_helper.from_array(bias, f"conv{i}_b"),
        ]
        nodes += [
            helper.make_node(
                "Conv", [current, f"conv{i}_w", f"conv{i}_b"], [f"c{i}"], pads=[1, 1, 1, 1]
            ),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        current = f"r{i}"
        if i < len(convs) - 1:
            nodes.append(
                helper.make_node(
                    "MaxPool", [current], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]
                )
            )
            current = f"p{i}"
    nodes += [
        helper.make_node("GlobalAveragePool", [current], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["features"], axis=1),
    ]
    if head is None:
        output = helper.make_tensor_value_info(
            "features", TensorProto.FLOAT, ["N", convs[-1][0].shape[0]]
        )
    else:
        weight, bias = head
        initializers += [
            numpy_helper.from_array(weight, "dense_w"),
            numpy_helper.from_array(bias, "dense_b"),
        ]
        nodes += [
            helper.make_node("Gemm", ["features", "dense_w", "dense_b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ]
        output = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES])
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", SIDE, SIDE, CHANNELS])],
        [output],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _fit_head(
    features: NDArray[np.float32], labels: NDArray[np.int64]
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Ridge least squares from standardised pooled features to one-hot labels, as logits."""
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
    z = (features - mean) / std
    targets = np.eye(CLASSES)[labels] * 8.0 - 4.0  # confident logits for the softmax
    a = z.T @ z + RIDGE * len(z) * np.eye(z.shape[1])
    weight = np.linalg.solve(a, z.T @ targets)
    # Fold the standardisation into the dense layer: logits = features @ w + b.
    w = weight / std[:, np.newaxis]
    b = targets.mean(axis=0) - mean @ w
    return w.astype(np.float32), b.astype(np.float32)


def build_small_cnn(path: Path, *, seed: int = SEED) -> Path:
    """Write the CNN to ``path`` (ONNX) and return it; same bytes for the same seed."""
    import onnxruntime as ort

    convs = _conv_weights(np.random.default_rng(seed))
    body = ort.InferenceSession(
        _graph(convs, None).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    images, labels = digit_images()
    (features,) = body.run(["features"], {"input": images})
    model = _graph(convs, _fit_head(np.asarray(features, dtype=np.float32), labels))
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the .onnx file")
    args = parser.parse_args()
    path = build_small_cnn(args.out)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
