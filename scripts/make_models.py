#!/usr/bin/env python3
"""Builds crank-node's reference ONNX models from scikit-learn's bundled digits set.

Run with `.venv/bin/python scripts/make_models.py` from the repository root. Everything is
seeded, so a second run rewrites byte-identical files. Nothing is downloaded: the digits set
(1797 8x8 greyscale images, 10 classes) ships inside scikit-learn.

Outputs, all under models/:
  digits-mlp.onnx    sklearn MLPClassifier 64->64->10, converted by skl2onnx (no ZipMap)
  digits-cnn.onnx    Conv-Relu-MaxPool-Conv-Relu-Flatten-Gemm-Softmax, trained here in numpy
  digits-wide.onnx   MLP 64->1024->512->10 + Softmax (~2.4 MB of weights), for benchmarks
  digits-test.json   the held-out split: features (pixel/16, float32) and labels
  manifest.json      per model: file, blake3/sha256, input/output signature, test accuracy
  samples/digit-<k>.json       a test image of digit k as [1,64] (MLP and wide models)
  samples/digit-<k>-cnn.json   the same image as [1,1,8,8] (CNN)
  fixtures/unsupported-op.onnx a valid graph using Det, which tract lacks (error tests)

Features are the digits' pixel intensities divided by 16, so every value lies in [0, 1].
The accuracy in the manifest is the one the training library computed on the test split
(sklearn's `score` for the sklearn models, a float32 numpy forward pass for the CNN). The
script also runs every exported model through onnxruntime and refuses to write a manifest
whose exported model disagrees with the training library on any test prediction.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

import blake3
import numpy as np
import onnx
import onnxruntime as ort
import sklearn
import skl2onnx
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

SEED = 0
TEST_FRACTION = 0.2
OPSET = 17
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "models"


def load_split():
    """The digits set scaled to [0, 1] and split 80/20, stratified, with a fixed seed."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=TEST_FRACTION, random_state=SEED, stratify=y)


# ---------------------------------------------------------------------------------------------
# Model 1: sklearn MLPClassifier through skl2onnx.


def make_mlp(x_train, y_train, x_test, y_test):
    model = MLPClassifier(
        hidden_layer_sizes=(64,), max_iter=400, random_state=SEED, early_stopping=False
    )
    model.fit(x_train, y_train)
    # zipmap=False: tract has no ZipMap; probabilities come out as a plain [N,10] tensor.
    onx = to_onnx(
        model,
        x_train[:1],
        options={id(model): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    # skl2onnx leaves the batch dimension unnamed; name it N like the other two models.
    for value in list(onx.graph.input) + list(onx.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_param and not dims[0].dim_value:
            dims[0].dim_param = "N"
    onnx.checker.check_model(onx, full_check=True)
    reference = model.predict(x_test)
    score = float(model.score(x_test, y_test))
    return onx, reference, score


# ---------------------------------------------------------------------------------------------
# Model 2: a small CNN trained with hand-written backprop in numpy.


def im2col(x, k, pad):
    """[N,C,H,W] -> [N*H*W, C*k*k] patches for a stride-1 'same' convolution."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.empty((n, c, k, k, h, w), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, i, j] = xp[:, :, i : i + h, j : j + w]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * h * w, c * k * k)


def col2im(cols, shape, k, pad):
    """Adjoint of im2col: scatters patch gradients back onto the padded input."""
    n, c, h, w = shape
    cols = cols.reshape(n, h, w, c, k, k).transpose(0, 3, 4, 5, 1, 2)
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=cols.dtype)
    for i in range(k):
        for j in range(k):
            xp[:, :, i : i + h, j : j + w] += cols[:, :, i, j]
    return xp[:, :, pad : pad + h, pad : pad + w]


def conv_forward(x, w, b):
    n, _, h, wd = x.shape
    co, _, k, _ = w.shape
    cols = im2col(x, k, k // 2)
    out = cols @ w.reshape(co, -1).T + b
    return out.reshape(n, h, wd, co).transpose(0, 3, 1, 2), cols


def conv_backward(dout, cols, x_shape, w):
    co, _, k, _ = w.shape
    d = dout.transpose(0, 2, 3, 1).reshape(-1, co)
    dw = (d.T @ cols).reshape(w.shape)
    db = d.sum(axis=0)
    dx = col2im(d @ w.reshape(co, -1), x_shape, k, k // 2)
    return dx, dw, db


def maxpool_forward(x):
    n, c, h, w = x.shape
    r = x.reshape(n, c, h // 2, 2, w // 2, 2)
    out = r.max(axis=(3, 5))
    # Route the gradient to one maximum per window (the first), as ONNX MaxPool's argmax does.
    flat = r.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    idx = flat.argmax(axis=-1)
    return out, idx


def maxpool_backward(dout, idx, x_shape):
    n, c, h, w = x_shape
    mask = np.zeros((n, c, h // 2, w // 2, 4), dtype=dout.dtype)
    np.put_along_axis(mask, idx[..., None], dout[..., None], axis=-1)
    return mask.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(x_shape)


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Cnn:
    """Conv(1->8,3x3) Relu MaxPool(2) Conv(8->16,3x3) Relu Flatten Gemm(256->10) Softmax."""

    def __init__(self, rng):
        def he(shape, fan_in):
            return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

        self.p = {
            "conv1.w": he((8, 1, 3, 3), 9),
            "conv1.b": np.zeros(8, np.float32),
            "conv2.w": he((16, 8, 3, 3), 72),
            "conv2.b": np.zeros(16, np.float32),
            "fc.w": he((256, 10), 256),
            "fc.b": np.zeros(10, np.float32),
        }

    def forward(self, x, keep=False):
        p = self.p
        a1, cols1 = conv_forward(x, p["conv1.w"], p["conv1.b"])
        r1 = np.maximum(a1, 0)
        m1, idx1 = maxpool_forward(r1)
        a2, cols2 = conv_forward(m1, p["conv2.w"], p["conv2.b"])
        r2 = np.maximum(a2, 0)
        f = r2.reshape(len(x), -1)
        probs = softmax(f @ p["fc.w"] + p["fc.b"])
        if keep:
            self.cache = (x, a1, cols1, r1, m1, idx1, a2, cols2, f)
        return probs

    def backward(self, probs, y):
        p = self.p
        x, a1, cols1, r1, m1, idx1, a2, cols2, f = self.cache
        n = len(y)
        dz = probs.copy()
        dz[np.arange(n), y] -= 1.0
        dz /= n
        g = {"fc.w": f.T @ dz, "fc.b": dz.sum(axis=0)}
        df = (dz @ p["fc.w"].T).reshape(a2.shape)
        da2 = df * (a2 > 0)
        dm1, g["conv2.w"], g["conv2.b"] = conv_backward(da2, cols2, m1.shape, p["conv2.w"])
        dr1 = maxpool_backward(dm1, idx1, r1.shape)
        da1 = dr1 * (a1 > 0)
        _, g["conv1.w"], g["conv1.b"] = conv_backward(da1, cols1, x.shape, p["conv1.w"])
        return g


def train_cnn(x_train, y_train, epochs=30, batch=32, lr=2e-3):
    rng = np.random.default_rng(SEED)
    net = Cnn(rng)
    # Adam, in float32 throughout so the numpy forward pass matches the exported graph.
    m = {k: np.zeros_like(v) for k, v in net.p.items()}
    v = {k: np.zeros_like(v) for k, v in net.p.items()}
    b1, b2, eps, t = 0.9, 0.999, 1e-8, 0
    xs = x_train.reshape(-1, 1, 8, 8)
    for _ in range(epochs):
        order = rng.permutation(len(xs))
        for s in range(0, len(xs), batch):
            ix = order[s : s + batch]
            probs = net.forward(xs[ix], keep=True)
            grads = net.backward(probs, y_train[ix])
            t += 1
            for k in net.p:
                gk = grads[k].astype(np.float32)
                m[k] = b1 * m[k] + (1 - b1) * gk
                v[k] = b2 * v[k] + (1 - b2) * gk * gk
                mh = m[k] / (1 - b1**t)
                vh = v[k] / (1 - b2**t)
                net.p[k] = (net.p[k] - lr * mh / (np.sqrt(vh) + eps)).astype(np.float32)
    return net


def cnn_to_onnx(net):
    p = net.p
    inits = [
        numpy_helper.from_array(p["conv1.w"], "conv1.w"),
        numpy_helper.from_array(p["conv1.b"], "conv1.b"),
        numpy_helper.from_array(p["conv2.w"], "conv2.w"),
        numpy_helper.from_array(p["conv2.b"], "conv2.b"),
        numpy_helper.from_array(p["fc.w"], "fc.w"),
        numpy_helper.from_array(p["fc.b"], "fc.b"),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["input", "conv1.w", "conv1.b"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node(
            "Conv", ["p1", "conv2.w", "conv2.b"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits-cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return finish(graph, "digits-cnn: small CNN on sklearn digits, input pixel/16")


# ---------------------------------------------------------------------------------------------
# Model 3: a wide MLP (sklearn training, hand-built graph ending in Softmax).


def make_wide(x_train, y_train, x_test, y_test):
    # A fixed epoch budget keeps the run short; the accuracy is what the manifest records.
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    model = MLPClassifier(
        hidden_layer_sizes=(1024, 512), max_iter=60, random_state=SEED, early_stopping=False
    )
    model.fit(x_train, y_train)
    inits, nodes, prev = [], [], "input"
    layers = list(zip(model.coefs_, model.intercepts_))
    for i, (w, b) in enumerate(layers):
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"fc{i}.w"))
        inits.append(numpy_helper.from_array(b.astype(np.float32), f"fc{i}.b"))
        out = f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"fc{i}.w", f"fc{i}.b"], [out]))
        if i + 1 < len(layers):
            nodes.append(helper.make_node("Relu", [out], [out + ".relu"]))
            out += ".relu"
        prev = out
    nodes.append(helper.make_node("Softmax", [prev], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes,
        "digits-wide",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    onx = finish(graph, "digits-wide: MLP 64-1024-512-10 on sklearn digits, input pixel/16")
    return onx, model.predict(x_test), float(model.score(x_test, y_test))


# ---------------------------------------------------------------------------------------------
# Export helpers.


def finish(graph, doc):
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="crank-node scripts/make_models.py",
        doc_string=doc,
    )
    # Pin the IR version so the file does not change with the onnx package's default.
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def ort_predict(onx_bytes, feed_name, x):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(onx_bytes, opts, providers=["CPUExecutionProvider"])
    outs = sess.run(None, {feed_name: x})
    names = [o.name for o in sess.get_outputs()]
    probs = outs[names.index("probabilities")]
    return probs.argmax(axis=1)


def signature(onx):
    def info(v):
        t = v.type.tensor_type
        # A symbolic dimension is written as its name, a fixed one as its size.
        dims = [d.dim_param or d.dim_value or "?" for d in t.shape.dim]
        return {
            "name": v.name,
            "shape": dims,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
        }

    return [info(i) for i in onx.graph.input], [info(o) for o in onx.graph.output]


def write_json(path, value):
    """Indented JSON, except that lists of numbers stay on one line (one row per line)."""

    def dump(v, depth):
        pad = " " * depth
        if isinstance(v, dict):
            items = [f'{pad} {json.dumps(k)}: {dump(x, depth + 1).lstrip()}' for k, x in v.items()]
            return pad + "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(v, list) and v and all(isinstance(x, (dict, list)) for x in v):
            return pad + "[\n" + ",\n".join(dump(x, depth + 1) for x in v) + "\n" + pad + "]"
        return pad + json.dumps(v)

    path.write_text(dump(value, 0) + "\n")


def main():
    OUT.mkdir(exist_ok=True)
    (OUT / "samples").mkdir(exist_ok=True)
    x_train, x_test, y_train, y_test = load_split()

    mlp_onx, mlp_pred, mlp_score = make_mlp(x_train, y_train, x_test, y_test)
    net = train_cnn(x_train, y_train)
    cnn_pred = net.forward(x_test.reshape(-1, 1, 8, 8)).argmax(axis=1)
    cnn_score = float((cnn_pred == y_test).mean())
    cnn_onx = cnn_to_onnx(net)
    wide_onx, wide_pred, wide_score = make_wide(x_train, y_train, x_test, y_test)

    entries = []
    for name, onx, pred, score, shape, how in [
        ("digits-mlp", mlp_onx, mlp_pred, mlp_score, (-1, 64), "sklearn MLPClassifier.score"),
        ("digits-cnn", cnn_onx, cnn_pred, cnn_score, (-1, 1, 8, 8), "numpy float32 forward pass"),
        ("digits-wide", wide_onx, wide_pred, wide_score, (-1, 64), "sklearn MLPClassifier.score"),
    ]:
        data = onx.SerializeToString()
        inputs, outputs = signature(onx)
        feed = x_test.reshape(shape)
        ort_pred = ort_predict(data, inputs[0]["name"], feed)
        disagree = int((ort_pred != pred).sum())
        if disagree:
            sys.exit(f"{name}: onnxruntime disagrees with the training library on {disagree} samples")
        correct = int((pred == y_test).sum())
        if correct != round(score * len(y_test)):
            sys.exit(f"{name}: score {score} does not match {correct} correct")
        file = f"{name}.onnx"
        (OUT / file).write_bytes(data)
        weights = sum(int(np.prod(i.dims)) for i in onx.graph.initializer)
        entries.append(
            {
                "name": name,
                "file": file,
                "blake3": blake3.blake3(data).hexdigest(),
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
                "parameters": weights,
                "inputs": inputs,
                "outputs": outputs,
                "test_accuracy": score,
                "test_correct": correct,
                "test_samples": int(len(y_test)),
                "accuracy_source": how,
            }
        )
        print(f"{name:12} {len(data):>9} bytes  accuracy {score:.4f} ({correct}/{len(y_test)})")

    write_json(
        OUT / "digits-test.json",
        {
            "description": "sklearn digits held-out split; features are pixel/16 (float32), "
            "row-major 8x8",
            "seed": SEED,
            "test_fraction": TEST_FRACTION,
            "features": [[float(v) for v in row] for row in x_test],
            "labels": [int(v) for v in y_test],
        },
    )
    write_json(
        OUT / "manifest.json",
        {
            "generator": "scripts/make_models.py",
            "versions": {
                "numpy": np.__version__,
                "scikit-learn": sklearn.__version__,
                "skl2onnx": skl2onnx.__version__,
                "onnx": onnx.__version__,
            },
            "dataset": "sklearn.datasets.load_digits, features pixel/16",
            "test_split": "digits-test.json",
            "models": entries,
        },
    )

    # A valid ONNX file using an operator (Det) that tract does not implement, for the
    # engine's error-path tests.
    (OUT / "fixtures").mkdir(exist_ok=True)
    det = helper.make_graph(
        [helper.make_node("Det", ["m"], ["det"])],
        "unsupported-op",
        [helper.make_tensor_value_info("m", TensorProto.FLOAT, ["N", 3, 3])],
        [helper.make_tensor_value_info("det", TensorProto.FLOAT, ["N"])],
    )
    (OUT / "fixtures" / "unsupported-op.onnx").write_bytes(
        finish(det, "uses Det, which tract lacks").SerializeToString()
    )

    # Sample inputs: the first test image of each class, as bare nested arrays in the input
    # shape, so a CLI can read them without knowing this script: [1,64] and [1,1,8,8].
    for k in range(10):
        row = x_test[int(np.flatnonzero(y_test == k)[0])]
        flat = [[float(v) for v in row]]
        image = [[[[float(v) for v in row[r * 8 : (r + 1) * 8]] for r in range(8)]]]
        write_json(OUT / "samples" / f"digit-{k}.json", flat)
        write_json(OUT / "samples" / f"digit-{k}-cnn.json", image)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
