from targets import Device

DEVICE = Device(
    name="cloud-gpu",
    description="an NVIDIA GPU server: the cloud half as a TensorRT INT8 (explicit Q/DQ) engine, batched",
    roles=("cloud",), backend="tensorrt", precision="int8", onnx_opset=17,
    versions={"tensorrt": ">=10", "cuda": ">=12"},
    cannot=("build its engine without an NVIDIA GPU and TensorRT on the host that builds it",),
    # min/opt/max batch the engine is built for: the server batches frames across edges
    backend_options={"parser": "10", "batch_profile": [1, 16, 64]},
)
