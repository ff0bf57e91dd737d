"""TensorRT runner: a stamped engine for this device (built at first start), device buffers, a batch.

Buffers go through cuda-python on servers and pycuda on a Jetson Nano (JetPack 4.6 has no
cuda-python wheel for Python 3.6), whichever imports. TensorRT >= 8.5 names I/O tensors
(`set_input_shape`, `set_tensor_address`, `execute_async_v3`); 8.2 has bindings
(`set_binding_shape`, `execute_v2`); both are handled.
"""

from typing import Dict, Optional

import numpy as np

from runtime.backends.base import Runner
from runtime.backends.tensorrt.engine import engine_for, import_tensorrt
from runtime.errors import BundleError


class _CudaPython:
    def __init__(self):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        self.cudart = cudart

    def _check(self, result):
        error = result[0]
        if int(error) != 0:
            raise BundleError("CUDA error {}".format(error))
        return result[1] if len(result) > 1 else None

    def allocate(self, size: int):
        return self._check(self.cudart.cudaMalloc(size))

    def to_device(self, pointer, array: np.ndarray) -> None:
        self._check(self.cudart.cudaMemcpy(pointer, array.ctypes.data, array.nbytes,
                                           self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))

    def to_host(self, array: np.ndarray, pointer) -> None:
        self._check(self.cudart.cudaMemcpy(array.ctypes.data, pointer, array.nbytes,
                                           self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost))

    def synchronize(self) -> None:
        self._check(self.cudart.cudaDeviceSynchronize())

    def address(self, pointer) -> int:
        return int(pointer)

    def free(self, pointer) -> None:
        self._check(self.cudart.cudaFree(pointer))


class _PyCuda:
    def __init__(self):
        import pycuda.autoinit  # noqa: F401  (creates the context)
        import pycuda.driver as cuda
        self.cuda = cuda

    def allocate(self, size: int):
        return self.cuda.mem_alloc(size)

    def to_device(self, pointer, array: np.ndarray) -> None:
        self.cuda.memcpy_htod(pointer, array)

    def to_host(self, array: np.ndarray, pointer) -> None:
        self.cuda.memcpy_dtoh(array, pointer)

    def synchronize(self) -> None:
        self.cuda.Context.synchronize()

    def address(self, pointer) -> int:
        return int(pointer)

    def free(self, pointer) -> None:
        pointer.free()


def _cuda_memory():
    for backend in (_CudaPython, _PyCuda):
        try:
            return backend()
        except ImportError:
            continue
    raise BundleError("the tensorrt backend needs cuda-python (pip install cuda-python) or pycuda (Jetson)")


class TensorRTRunner(Runner):
    def __init__(self, path, threads: Optional[int] = None, artefact: Optional[dict] = None, cache_key: str = ""):
        if artefact is None or "engine" not in artefact:
            raise BundleError("{} has no TensorRT build recipe in the manifest".format(path))
        plan = engine_for(path, artefact, cache_key)  # probes for TensorRT and a GPU before touching either
        trt = import_tensorrt()

        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise BundleError("TensorRT cannot load {} on this GPU: see its log above".format(plan))
        self.context = self.engine.create_execution_context()
        self.memory = _cuda_memory()
        self.named = hasattr(self.engine, "num_io_tensors")  # TensorRT >= 8.5
        self.max_batch = artefact["engine"]["recipe"]["max_batch"]
        self.tensors = []  # (name, is_input, numpy dtype, shape without batch)
        count = self.engine.num_io_tensors if self.named else self.engine.num_bindings
        for index in range(count):
            if self.named:
                name = self.engine.get_tensor_name(index)
                is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                dtype, shape = self.engine.get_tensor_dtype(name), self.engine.get_tensor_shape(name)
            else:
                name = self.engine.get_binding_name(index)
                is_input = self.engine.binding_is_input(index)
                dtype, shape = self.engine.get_binding_dtype(index), self.engine.get_binding_shape(index)
            self.tensors.append((name, is_input, np.dtype(trt.nptype(dtype)), tuple(shape)[1:]))
        self.buffers = {name: self.memory.allocate(self.max_batch * int(np.prod(shape)) * dtype.itemsize)
                        for name, _, dtype, shape in self.tensors}
        self.inputs = [(name, dtype.name, ["batch"] + list(shape)) for name, is_in, dtype, shape in self.tensors if is_in]
        self.outputs = [(name, dtype.name, ["batch"] + list(shape)) for name, is_in, dtype, shape in self.tensors
                        if not is_in]

    def infer_impl(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        batch = len(next(iter(feed.values())))
        if batch > self.max_batch:
            return _concatenate([self.infer_impl({k: v[i:i + self.max_batch] for k, v in feed.items()})
                                 for i in range(0, batch, self.max_batch)])
        results = {}
        for index, (name, is_input, dtype, shape) in enumerate(self.tensors):
            if is_input:
                array = np.ascontiguousarray(feed[name], dtype=dtype)
                if self.named:
                    self.context.set_input_shape(name, array.shape)
                else:
                    self.context.set_binding_shape(index, array.shape)
                self.memory.to_device(self.buffers[name], array)
            else:
                results[name] = np.empty((batch,) + shape, dtype=dtype)
        if self.named:
            for name, buffer in self.buffers.items():
                self.context.set_tensor_address(name, self.memory.address(buffer))
            ok = self.context.execute_async_v3(0)
        else:
            ok = self.context.execute_v2([self.memory.address(self.buffers[name]) for name, _, _, _ in self.tensors])
        if not ok:
            raise BundleError("TensorRT failed to run a batch of {}".format(batch))
        self.memory.synchronize()
        for name, array in results.items():
            self.memory.to_host(array, self.buffers[name])
        return results

    def close(self) -> None:
        """Device buffers first, then the context and engine that used them."""
        for buffer in self.buffers.values():
            self.memory.free(buffer)
        self.buffers = {}
        self.context = self.engine = None


def _concatenate(parts):
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


RUNNER = TensorRTRunner
