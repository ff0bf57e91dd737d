from targets import Device

DEVICE = Device(
    name="jetson-nano",
    description="Jetson Nano, JetPack 4.6: a TensorRT FP16 engine built on the device",
    roles=("edge",), backend="tensorrt", precision="fp16", onnx_opset=13,
    versions={"jetpack": "4.6", "tensorrt": "8.2", "cuda": "10.2", "python": "3.6"},
    cannot=("run INT8 kernels: Maxwell sm_53 has none, so TensorRT 8.2 refuses Q/DQ networks",
            "parse ONNX opsets above 13", "take UINT8 tensors (TensorRT 8.5+)"),
    refused_precisions={"int8": (
        "the Jetson Nano's Maxwell GPU (sm_53) has no INT8 kernels: TensorRT 8.2 fails with 'Networks with "
        "QuantizeLayer/DequantizeLayer layers require hardware with Int8 support'. Build with --precision fp16 "
        "(the default for jetson-nano); the features on the wire stay int8 codes either way")},
    backend_options={"parser": "8.2", "batch_profile": [1, 1, 1]},
    default_cloud="cloud-gpu",
)
