from targets import Device, SpeedReference

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
    # its TensorRT needs its GPU: ONNX Runtime on a CPU stands in, slowed by what this reference says
    speed=SpeedReference(
        "cifar-resnet18", (3, 32, 32), 47.436,
        "BBNet (Zhou et al., Sensors 2021, 21(13):4494), Table 4: Jetson Nano alone, 4.7436 s per 100 CIFAR-10 images",
        stand_in="cpu"),
)
