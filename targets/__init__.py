"""One definition per deployment target: the only place that knows what a device is.

Toolchain and runtime read these; neither branches on a target name anywhere else.
Python 3.6-compatible, since edge runtimes read it too.
"""

from typing import Dict, FrozenSet, NamedTuple, Tuple

from runtime.errors import TargetError

# ONNX ops the TensorRT 8.2 ONNX parser imports (onnx-tensorrt docs/operators.md, release/8.2-GA;
# Round and Sign arrived in 8.2), restricted to what CNN halves use; later versions add to it.
TENSORRT_8_2_OPS = frozenset((
    "Abs", "Add", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip", "Concat", "Constant",
    "ConstantOfShape", "Conv", "ConvTranspose", "DequantizeLinear", "Div", "Dropout", "Elu", "Equal", "Erf",
    "Exp", "Expand", "Flatten", "Floor", "Gather", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater",
    "HardSigmoid", "HardSwish", "Identity", "InstanceNormalization", "LeakyRelu", "Less", "Log", "MatMul", "Max",
    "MaxPool", "Min", "Mul", "Neg", "Pad", "Pow", "PRelu", "QuantizeLinear", "Reciprocal", "ReduceMax",
    "ReduceMean", "ReduceMin", "ReduceSum", "Relu", "Reshape", "Resize", "Round", "Selu", "Shape", "Sigmoid",
    "Sign", "Slice", "Softmax", "Softplus", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Tile",
    "Transpose", "Unsqueeze", "Where",
))
TENSORRT_8_6_OPS = TENSORRT_8_2_OPS | {"LayerNormalization", "GroupNormalization", "Mod", "Trilu"}
# I/O tensor types the parser takes: UINT8 I/O arrived in 8.5, so codes cross TensorRT halves as float32
TENSORRT_IO_DTYPES = frozenset(("float32", "float16", "int8", "int32", "bool"))


class Target(NamedTuple):
    name: str
    description: str
    edge_backend: str  # runtime/backends/<name> that runs the head + encoder
    cloud_backend: str  # runtime/backends/<name> that runs the decoder + tail
    edge_precision: str
    cloud_precision: str
    onnx_opset: int
    versions: Dict[str, str]  # what the device runs; artefacts are built for these
    cannot: Tuple[str, ...]  # what the device cannot do, said to users before it bites
    parser_ops: FrozenSet[str] = frozenset()  # ONNX ops its TensorRT parser imports (empty: ONNX Runtime, all)
    code_dtype: str = "uint8"  # dtype of the codes where an artefact ends or starts
    batch_profile: Tuple[int, int, int] = (1, 1, 1)  # TensorRT min/opt/max batch of the cloud half
    refused_precisions: Dict[str, str] = {}  # --precision values this device cannot run, and why


TARGETS = {target.name: target for target in (
    Target(
        name="cpu",
        description="any x86-64/aarch64 CPU for both halves, through ONNX Runtime",
        edge_backend="onnxrt", cloud_backend="onnxrt",
        edge_precision="fp32", cloud_precision="fp32",
        onnx_opset=17,
        versions={"onnxruntime": ">=1.17", "python": ">=3.6"},
        cannot=(),
    ),
    Target(
        name="raspberry-pi",
        description="Raspberry Pi 4/5 on 64-bit Raspberry Pi OS: full-INT8 TFLite edge half",
        edge_backend="tflite", cloud_backend="onnxrt",
        edge_precision="int8", cloud_precision="fp32",
        onnx_opset=17,
        versions={"ai-edge-litert": "2.3.0", "python": "3.11", "glibc": ">=2.27"},
        cannot=("run 32-bit (armv7l) OS images: no ai-edge-litert wheel exists for them",
                "use a GPU"),
    ),
    Target(
        name="jetson-nano",
        description="Jetson Nano, JetPack 4.6: TensorRT FP16 engine built on the device",
        edge_backend="tensorrt", cloud_backend="onnxrt",
        edge_precision="fp16", cloud_precision="fp32",
        onnx_opset=13,
        versions={"jetpack": "4.6", "tensorrt": "8.2", "cuda": "10.2", "python": "3.6"},
        cannot=("run INT8 kernels: Maxwell sm_53 has none, so TensorRT 8.2 refuses Q/DQ networks",
                "parse ONNX opsets above 13", "take UINT8 tensors (TensorRT 8.5+)"),
        parser_ops=TENSORRT_8_2_OPS, code_dtype="float32",
        refused_precisions={"int8": (
            "the Jetson Nano's Maxwell GPU (sm_53) has no INT8 kernels: TensorRT 8.2 fails with 'Networks with "
            "QuantizeLayer/DequantizeLayer layers require hardware with Int8 support'. Build with --precision fp16 "
            "(the default for jetson-nano); the features on the wire stay int8 codes either way")},
    ),
    Target(
        name="jetson-orin",
        description="Jetson Orin, JetPack 6: TensorRT INT8 (explicit Q/DQ) engine built on the device",
        edge_backend="tensorrt", cloud_backend="onnxrt",
        edge_precision="int8", cloud_precision="fp32",
        onnx_opset=17,
        versions={"jetpack": "6.x", "tensorrt": ">=8.6", "python": "3.10"},
        cannot=("use TensorRT's implicit INT8 calibrators on TensorRT 10+ (deprecated, removed in 11)",),
        parser_ops=TENSORRT_8_6_OPS, code_dtype="float32",
    ),
    Target(
        name="cloud-gpu",
        description="CPU edge half (ONNX Runtime); cloud half as an INT8 TensorRT engine on an NVIDIA GPU",
        edge_backend="onnxrt", cloud_backend="tensorrt",
        edge_precision="fp32", cloud_precision="int8",
        onnx_opset=17,
        versions={"tensorrt": ">=10", "cuda": ">=12"},
        cannot=("build its engine without an NVIDIA GPU and TensorRT on the build host",),
        parser_ops=TENSORRT_8_6_OPS, code_dtype="float32", batch_profile=(1, 16, 64),
    ),
)}
DEFAULT_TARGET = "cpu"


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise TargetError("unknown target {!r}; targets: {}".format(name, ", ".join(TARGETS)))
    return TARGETS[name]
