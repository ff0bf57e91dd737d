from targets import Device

DEVICE = Device(
    name="jetson-orin",
    description="Jetson Orin, JetPack 6: a TensorRT INT8 (explicit Q/DQ) engine built on the device",
    roles=("edge",), backend="tensorrt", precision="int8", onnx_opset=17,
    versions={"jetpack": "6.x", "tensorrt": ">=8.6", "python": "3.10"},
    cannot=("use TensorRT's implicit INT8 calibrators on TensorRT 10+ (deprecated, removed in 11)",),
    backend_options={"parser": "8.6", "batch_profile": [1, 1, 1]},
    default_cloud="cloud-gpu",
)
