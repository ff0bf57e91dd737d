"""Images into model input on the edge: npz/npy arrays, a folder of image files, a camera.

Every source goes through the bundle's `InputSpec` (runtime/inputs.py), as calibration did, so
the same picture gives the same codes. numpy only; Pillow reads image files and OpenCV a camera,
each imported only when used. A folder may hold class subfolders (labels are their sorted
names, as torchvision's ImageFolder) and `train`/`test` splits.
"""

import logging
import time
import warnings
import zipfile
from pathlib import Path
from typing import Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from runtime.errors import EdgesplitError
from runtime.inputs import InputSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".webp", ".gif", ".tif", ".tiff")
SPLITS = ("train", "test")
COLOR_MODES = {1: "L", 3: "RGB"}
MAX_PIXELS = 4096 * 4096  # an image file declaring more (in its header) is refused before it is decoded
LOG = logging.getLogger("edgesplit.images")


class SourceFrame(NamedTuple):
    index: int
    image: Optional[np.ndarray]  # float32 C,H,W in [0, 1], the model's input size; None when `error` says why
    label: Union[int, np.ndarray, None]  # a class index, or one per pixel (H, W)
    error: str = ""  # why the source could not give this frame (an unreadable file); the run goes on
    due: Optional[float] = None  # time.monotonic() when a paced camera took it: its latency counts from then

    def start(self) -> float:
        """When the frame's latency starts: its capture when paced, else now (the edge takes it)."""
        return time.monotonic() if self.due is None else self.due


def check_labels(labels: np.ndarray, count: int, origin) -> np.ndarray:
    """Class indices, one per image (N) or per pixel (N, H, W), or float targets shaped like an output."""
    classes = np.issubdtype(labels.dtype, np.integer)
    if labels.ndim == 0 or not (classes or np.issubdtype(labels.dtype, np.floating)) or \
            (labels.ndim == 1 and not classes):
        raise EdgesplitError("{}: labels must be integer class indices (one per image, or per pixel) or float "
                             "targets shaped like an output, got {} {}".format(origin, labels.dtype, labels.shape))
    if len(labels) != count:
        raise EdgesplitError("{}: {} labels for {} images".format(origin, len(labels), count))
    if classes and len(labels) and labels.min() < 0:
        raise EdgesplitError("{}: labels must be class indices >= 0, found {}".format(origin, labels.min()))
    return labels.astype(np.int64 if classes else np.float32)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise EdgesplitError("split must be {}, got {!r}".format(" or ".join(SPLITS), split))
    return split


def load_array(path):
    """np.load without pickles, any failure one line: an .npy array or an open .npz archive."""
    try:
        loaded = np.load(str(path), allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise EdgesplitError("{} is not a numpy {} file of uint8 images: {}".format(
            path, Path(path).suffix or ".npz/.npy", str(error).splitlines()[0])) from error
    if isinstance(loaded, np.ndarray) and loaded.ndim and not len(loaded):
        raise EdgesplitError("{} holds no images: the array is empty".format(path))
    return loaded


def read_npz(path, split: str) -> Tuple[np.ndarray, Optional[np.ndarray], bool]:
    """edgesplit's array format: `images` (uint8) and optional `labels`, or `<split>_images`/`<split>_labels`.

    Returns images as stored (layout not yet known), labels, and whether the file holds that split
    separately (False: one set for everything)."""
    check_split(split)
    archive = load_array(path)
    if not hasattr(archive, "files"):
        raise EdgesplitError("{} is an .npy array, not an .npz archive".format(path))
    with archive:
        split_prefix = "{}_".format(split)
        prefix = split_prefix if split_prefix + "images" in archive else ""
        if prefix + "images" not in archive:
            raise EdgesplitError("{} has no 'images' or '{}_images' array".format(path, split))
        images = archive[prefix + "images"]
        labels = archive[prefix + "labels"] if prefix + "labels" in archive else None
    if len(images) == 0:
        raise EdgesplitError("{} holds no images: its '{}images' array is empty".format(path, prefix))
    if labels is not None:
        labels = check_labels(labels, len(images), path)
    return images, labels, bool(prefix)


def _image_files(directory: Path) -> List[Path]:
    """The folder's image files by name; a link or device named like one is listed too, to be refused as a
    frame of its own (an error row), not dropped without a word."""
    files = [p for p in directory.iterdir() if not p.name.startswith(".") and not p.is_dir()]
    others = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        LOG.warning("%s: skipped %d file(s) that are not images (%s): %s", directory, len(others),
                    ", ".join(IMAGE_SUFFIXES), ", ".join(sorted(others)[:3]) + (" ..." if len(others) > 3 else ""))
    return sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES)


def _class_names(root: Path) -> List[str]:
    """Subfolders of `root` that hold an image file (none where `root` is not a folder)."""
    if not root.is_dir():
        return []
    return [p.name for p in root.iterdir()
            if p.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir())]


def folder_layout(directory: Path, split: str) -> Tuple[Path, List[Tuple[Path, Optional[int]]], List[str], bool]:
    """(folder read, [(file, label)], class names, whether it is that split's own folder).

    `train/` and `test/` subfolders are splits; class subfolders give labels (numbered in name order over every
    split, so a class one split lacks does not shift the others'); plain files have none."""
    has_split = (directory / check_split(split)).is_dir()
    root = directory / split if has_split else directory
    listed = {p.name: _image_files(p) for p in sorted(root.iterdir()) if p.is_dir()}
    classes = [name for name, images in listed.items() if images]
    if classes and has_split:
        classes = sorted(set().union(*(_class_names(directory / each) for each in SPLITS)))
    if classes:
        files = [(path, label) for label, name in enumerate(classes) for path in listed.get(name, [])]
    else:
        files = [(path, None) for path in _image_files(root)]
    if not files:
        raise EdgesplitError("{} holds no image files ({}), directly or in class subfolders".format(
            root, ", ".join(IMAGE_SUFFIXES)))
    return root, files, classes, has_split


def decode_image(path: Path, spec: InputSpec) -> np.ndarray:
    """One image file → uint8 C,H,W at the model's size (Pillow decodes to the model's color mode)."""
    try:
        from PIL import Image
    except ImportError as error:
        raise EdgesplitError("reading image files needs Pillow: pip install pillow") from error
    mode = COLOR_MODES.get(spec.channels)
    if mode is None:
        raise EdgesplitError("image files give 1 or 3 channels, the model takes {}".format(spec.channels))
    if not path.is_file():  # a dangling link, a device: never opened (a read of /dev/zero would not end)
        raise EdgesplitError("{} is not a regular file".format(path))
    try:
        with warnings.catch_warnings():  # Pillow's own bomb check warns at 89 MP: ours is stricter, and one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(str(path)) as picture:  # reads the header only
                _check_size(path, picture.size)
                pixels = np.asarray(_without_opaque_alpha(picture))
    except EdgesplitError:
        raise
    except Image.DecompressionBombError:  # Pillow's own refusal, from the header, past twice its 89 MP warning
        raise EdgesplitError("{} declares over {:,} pixels, over the {} a frame may have ({:.1f} MP): refused "
                             "before decoding".format(path, 2 * Image.MAX_IMAGE_PIXELS, MAX_PIXELS,
                                                      MAX_PIXELS / 1e6)) from None
    except Exception as error:  # Pillow's decoders raise many types for a broken file; each is this file's fault
        raise EdgesplitError("{} is not a readable image: {}".format(path, str(error) or type(error).__name__)) \
            from error
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if channels != spec.channels:  # converting colour would be a silent fix: the camera must match the model
        raise EdgesplitError("{}: the image has {} channel(s), the model takes {} ({})".format(
            path, channels, spec.channels, mode))
    return spec.fit(spec.arrange(pixels[None] if channels > 1 else pixels[None, None], path), path)[0]


def _check_size(path: Path, size: Tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_PIXELS:
        raise EdgesplitError("{} declares {}x{} pixels, over the {} a frame may have ({:.1f} MP): refused before "
                             "decoding".format(path, width, height, MAX_PIXELS, MAX_PIXELS / 1e6))


def _without_opaque_alpha(picture):
    """Palette images as their colours; an alpha channel dropped only where every pixel is opaque (lossless)."""
    if picture.mode == "P":
        picture = picture.convert("RGBA" if "transparency" in picture.info else "RGB")
    if picture.mode in ("RGBA", "LA") and picture.getchannel("A").getextrema() == (255, 255):
        picture = picture.convert(picture.mode[:-1])
    return picture


def read_folder(directory: Path, spec: InputSpec, split: str) -> Tuple[np.ndarray, Optional[np.ndarray], bool]:
    """A folder's images at the model's size (uint8 N,C,H,W), labels, and whether it held that split."""
    _, files, classes, has_split = folder_layout(directory, split)
    images = np.stack([decode_image(path, spec) for path, _ in files])
    labels = np.array([label for _, label in files], dtype=np.int64) if classes else None
    return images, labels, has_split


def _array_frames(images, labels, spec: InputSpec, origin, first: int) -> Iterator[SourceFrame]:
    arranged = spec.arrange(images, origin)
    # classes per image or per pixel; float targets are the build's to score
    kind = None if labels is None or labels.dtype.kind == "f" else "image" if labels.ndim == 1 else "pixel"
    for index in range(first, len(arranged)):
        label = None if kind is None else int(labels[index]) if kind == "image" else labels[index]
        yield SourceFrame(index, spec.prepare(arranged[index:index + 1], origin)[0], label)


def _file_frames(files, spec: InputSpec, first: int) -> Iterator[SourceFrame]:
    """Each file its own frame; one that cannot be read is a frame with an error, and the files after it go on."""
    for index, (path, label) in enumerate(files[first:], first):
        try:
            yield SourceFrame(index, decode_image(path, spec).astype(np.float32) / 255.0, label)
        except EdgesplitError as error:
            yield SourceFrame(index, None, label, str(error))


def _camera_frames(device: int, spec: InputSpec) -> Iterator[SourceFrame]:
    try:
        import cv2
    except ImportError as error:
        raise EdgesplitError("a camera source needs OpenCV: pip install opencv-python-headless") from error
    if spec.channels not in COLOR_MODES:
        raise EdgesplitError("a camera gives 1 or 3 channels, the model takes {}".format(spec.channels))
    capture = cv2.VideoCapture(device)
    if not capture.isOpened():
        raise EdgesplitError("camera {} cannot be opened".format(device))
    conversion = cv2.COLOR_BGR2GRAY if spec.channels == 1 else cv2.COLOR_BGR2RGB
    try:
        index = 0
        while True:
            ok, bgr = capture.read()
            if not ok:
                raise EdgesplitError("camera {} stopped delivering frames".format(device))
            picture = cv2.cvtColor(bgr, conversion)
            yield SourceFrame(index, spec.prepare(picture[None], "camera {}".format(device))[0], None)
            index += 1
    finally:
        capture.release()


def _check_split_given(path: Path, split: Optional[str], separate: bool) -> None:
    if split is not None and not separate:
        raise EdgesplitError("{} holds one set of images, not a {!r} split: leave out --split".format(
            path, check_split(split)))


def open_source(source: str, spec: InputSpec, split: Optional[str] = None, first: int = 0) -> Iterator[SourceFrame]:
    """`camera[:N]`, an .npz (its `<split>_images` or `images`), an .npy of uint8 images, or a folder. `split`
    (train or test) picks a set of a source that has both; None: its test set, or its one set."""
    if source == "camera" or source.startswith("camera:"):
        device = source.partition(":")[2] or "0"
        if not device.isdigit():
            raise EdgesplitError("camera source must be camera or camera:N, got {!r}".format(source))
        return _camera_frames(int(device), spec)
    path = Path(source)
    if path.is_dir():
        _, files, _, separate = folder_layout(path, split or "test")
        _check_split_given(path, split, separate)
        return _file_frames(files, spec, first)
    if path.suffix == ".npz" and path.is_file():
        images, labels, separate = read_npz(path, split or "test")
        _check_split_given(path, split, separate)
        return _array_frames(images, labels, spec, path, first)
    if path.suffix == ".npy" and path.is_file():
        _check_split_given(path, split, False)
        return _array_frames(load_array(path), None, spec, path, first)
    problem = "is not an .npz, an .npy or a folder" if path.exists() else "not found"
    raise EdgesplitError("source {!r} {}: give an .npz or .npy of uint8 images, a folder of image files, or "
                         "camera[:N]".format(source, problem))


def paced(frames: Iterator[SourceFrame], fps: Optional[float]) -> Iterator[SourceFrame]:
    """Release frames no faster than `fps`, as a camera would (no pacing when fps is None), each stamped with the
    time the camera took it: a frame the edge takes late (every slot in flight) has waited since then."""
    if not fps:
        for frame in frames:
            yield frame
        return
    start = time.monotonic()
    for count, frame in enumerate(frames):
        due = start + count / fps
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield frame._replace(due=due)
