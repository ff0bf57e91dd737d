"""Devices edgesplit builds for: one module per device in this package, nothing else knows them.

A device says which half it can run (edge, cloud or both), the runtime backend that runs it,
its default precision and the precisions it refuses (with the reason), the ONNX opset its
parser takes, the versions it runs, what it cannot do, and `backend_options`: facts that only
its backend's code reads (a TensorRT parser's version, a batch profile, the codes' dtype), and
`speed`: a reference model with a time published for the device, from which the toolchain derives how
much slower than the machine it runs on the device is (toolchain/device_speed.py; the testbed's quota).
A deployment is an edge device and a cloud device, chosen independently.

Adding a device is adding a module here with a `DEVICE = Device(...)`. Python 3.6-compatible,
since edge runtimes read it too.
"""

import importlib
import pkgutil
from typing import Dict, NamedTuple, Optional, Tuple

from runtime.errors import TargetError

ROLES = ("edge", "cloud")
PRECISIONS = ("fp32", "fp16", "int8")  # every precision any backend builds; each backend says its own


class SpeedReference(NamedTuple):
    """A model whose time per image on the device is published: the device's speed, measured against it."""

    model: str  # a reference model toolchain/device_speed.py builds
    input_shape: Tuple[int, int, int]
    published_ms: float  # per image, on the device
    source: str
    stand_in: str  # the edgesplit target whose edge halves run here in the device's place (its backend's)


class Device(NamedTuple):
    name: str
    description: str
    roles: Tuple[str, ...]  # the halves it can run
    backend: str  # runtime/backends/<backend> runs its half
    precision: str  # default precision of its half
    onnx_opset: int
    versions: Dict[str, str]  # what the device runs; artefacts are built for these
    cannot: Tuple[str, ...] = ()  # said to users before it bites
    refused_precisions: Dict[str, str] = {}  # precision -> why this device cannot run it
    backend_options: Dict[str, object] = {}  # read by its backend's code only
    default_cloud: Optional[str] = None  # an edge device's cloud unless --cloud says otherwise
    speed: Optional[SpeedReference] = None  # None: as fast as the machine the toolchain runs on

    def describe(self) -> dict:
        """What a manifest records about the device."""
        entry = self._asdict()
        entry.update(roles=list(self.roles), cannot=list(self.cannot), refused_precisions=dict(self.refused_precisions),
                     backend_options=dict(self.backend_options))
        del entry["speed"]  # the toolchain's concern: a bundle runs the same whatever the device's speed
        return entry


class Deployment(NamedTuple):
    edge: Device
    cloud: Device

    def device(self, role: str) -> Device:
        return self.edge if role == "edge" else self.cloud

    @property
    def name(self) -> str:
        """`edge`, or `edge-with-cloud` when the cloud is not the edge device's default."""
        return self.edge.name if self.cloud.name == self.edge.default_cloud else "{}-with-{}".format(
            self.edge.name, self.cloud.name)


def _discover() -> Dict[str, Device]:
    devices = {}
    for module in pkgutil.iter_modules(__path__):
        device = importlib.import_module("{}.{}".format(__name__, module.name)).DEVICE
        devices[device.name] = device
    return devices


DEVICES = _discover()
DEFAULT_EDGE = "cpu"


def names(role: str) -> Tuple[str, ...]:
    return tuple(name for name, device in sorted(DEVICES.items()) if role in device.roles)


def get_device(name: str, role: str) -> Device:
    """The device `name` for a role; an unknown name or a device that cannot take the role is refused."""
    if name not in DEVICES:
        raise TargetError("unknown device {!r}; edge devices: {}; cloud devices: {}".format(
            name, ", ".join(names("edge")), ", ".join(names("cloud"))))
    device = DEVICES[name]
    if role not in device.roles:
        raise TargetError("{!r} is {} device, not {} device; {} devices: {}".format(
            name, " and ".join("an " + r if r == "edge" else "a " + r for r in device.roles),
            "an edge" if role == "edge" else "a cloud", role, ", ".join(names(role))))
    return device


def deployment(edge: str, cloud: Optional[str] = None) -> Deployment:
    """An edge device and a cloud device (default: the edge device's `default_cloud`)."""
    edge_device = get_device(edge, "edge")
    return Deployment(edge_device, get_device(cloud or edge_device.default_cloud, "cloud"))
