from targets import Device, SpeedReference

DEVICE = Device(
    name="raspberry-pi",
    description="Raspberry Pi 4/5 on 64-bit Raspberry Pi OS: a full-INT8 TFLite edge half",
    roles=("edge",), backend="tflite", precision="int8", onnx_opset=17,
    versions={"ai-edge-litert": "2.3.0", "python": "3.11", "glibc": ">=2.27"},
    cannot=("run 32-bit (armv7l) OS images: no ai-edge-litert wheel exists for them", "use a GPU"),
    default_cloud="cloud-gpu",
    speed=SpeedReference(
        "mobilenet-v1", (3, 224, 224), 87.0,
        "TildAlice, \"MobileNet vs EfficientNet-Lite: Pi 4 First Model 38ms Gap\" (dev.to/tildalice.io, 2026): "
        "Raspberry Pi 4 CPU, TFLite, MobileNet v1 1.0_224 87 ms per image",
        stand_in="raspberry-pi"),
)
