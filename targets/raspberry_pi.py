from targets import Device

DEVICE = Device(
    name="raspberry-pi",
    description="Raspberry Pi 4/5 on 64-bit Raspberry Pi OS: a full-INT8 TFLite edge half",
    roles=("edge",), backend="tflite", precision="int8", onnx_opset=17,
    versions={"ai-edge-litert": "2.3.0", "python": "3.11", "glibc": ">=2.27"},
    cannot=("run 32-bit (armv7l) OS images: no ai-edge-litert wheel exists for them", "use a GPU"),
    default_cloud="cloud-gpu",
)
