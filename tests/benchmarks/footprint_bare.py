"""The bare side of `agent_footprint`: a runtime and paho-mqtt, the same model, nothing else.

Usage (started by ``agent_footprint.py``, not by hand)::

    python tests/benchmarks/footprint_bare.py --model wine.onnx --port 1883

Imports only the model runtime (onnxruntime, or LiteRT for a ``.tflite`` file), numpy and
paho-mqtt; loads the model with the agent's default options (one intra-op thread, one
inter-op thread, all graph optimisations), runs it once on a zero row, connects paho to the
broker with a background network loop (as the agent keeps one), prints ``ready`` and idles
until SIGTERM. It imports nothing from edgefleet, so what the agent holds above it is the
agent's own cost.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any


def load_and_run(path: Path) -> Any:
    """Load the model, run it once on zeros; return the session/interpreter (kept alive)."""
    import numpy as np

    if path.suffix == ".tflite":
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # pragma: no cover - the older wheel
            from tflite_runtime.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=1)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        shape = [max(1, int(d)) for d in detail["shape"]]
        interpreter.set_tensor(detail["index"], np.zeros(shape, dtype=detail["dtype"]))
        interpreter.invoke()
        for out in interpreter.get_output_details():
            interpreter.get_tensor(out["index"])
        return interpreter
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    node = session.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in node.shape]
    session.run(None, {node.name: np.zeros(shape, dtype=np.float32)})
    return session


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    model = load_and_run(args.model)
    connected = threading.Event()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bare")
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.connect(args.host, args.port, keepalive=60)
    client.loop_start()
    if not connected.wait(30):
        print("never connected", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda s, f: stop.set())
    print("ready", flush=True)
    stop.wait()
    client.loop_stop()
    client.disconnect()
    del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
