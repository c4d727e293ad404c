"""Runs an asterflow `model.onnx` in ONNX Runtime (issue 20): the peer that proves the export.

    python scripts/onnx_check.py MODEL.onnx ROWS.f32 FEATURES.json OUT.f32

ROWS.f32 holds raw (unstandardised) feature rows, row-major little-endian float32, in the
order FEATURES.json lists the features. Each feature is bound to the graph input of its name;
the graph's `probabilities` output is written to OUT.f32. Prints the input names and the
output's shape. Install: pip install onnxruntime==1.23.2 (the venv `.ci/run` makes).
"""
import json
import sys

import numpy as np
import onnxruntime


def main():
    model, rows, features, out = sys.argv[1:5]
    names = json.load(open(features))
    x = np.fromfile(rows, dtype=np.float32).reshape(-1, len(names))
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    if inputs != names:
        sys.exit(f"the graph's inputs {inputs} are not the features {names}")
    feeds = {name: x[:, i : i + 1] for i, name in enumerate(names)}
    (probabilities,) = session.run(["probabilities"], feeds)
    probabilities.astype(np.float32).tofile(out)
    print(json.dumps({"inputs": len(inputs), "shape": list(probabilities.shape), "onnxruntime": onnxruntime.__version__}))


if __name__ == "__main__":
    main()
