from targets import Device

DEVICE = Device(
    name="cpu",
    description="any x86-64/aarch64 CPU, through ONNX Runtime: an edge or a cloud server without a GPU",
    roles=("edge", "cloud"), backend="onnxrt", precision="fp32", onnx_opset=17,
    versions={"onnxruntime": ">=1.17", "python": ">=3.6"},
    # a CPU edge pairs with a CPU server, so the default bundle runs end to end on any machine
    default_cloud="cpu",
)
