"""The stereo sample format on disk (synthetic and MADS): atomic writer and the one reader.

Layout (docs/synthetic_data.md, "Dataset on disk")::

    DATASET/
      dataset.json                 written first; describes the set (format, skeleton, image size)
      <sequence>/
        <frame:06d>.left.jpg       RGB (JPEG q95 by default; PNG and WebP are accepted too)
        <frame:06d>.right.jpg
        <frame:06d>.npz            labels, written LAST (tmp file + os.replace): its presence marks
                                   a complete sample

Label keys (float64 unless noted; J joints): ``K_left, K_right (3, 3)``, ``D_left, D_right (n,)``,
``distortion_model`` (str), ``R_left, R_right (3, 3)``, ``P_left, P_right (3, 4)`` (LEFT rectified
frame -> each view's rectified pixels), ``T_world_to_cam (4, 4)`` (world -> left rectified frame),
``joints_3d_cam (J, 3)`` m (the frame P projects from), ``joints_3d_world (J, 3)`` m,
``joints_2d (2, J, 2)`` px in the stored images, ``visibility (2, J)`` bool, ``box (2, 4)`` xyxy px
per view, ``baseline`` (m), ``sequence`` (str), ``frame`` (int), ``time`` (s), ``rectified`` (bool).
Writers may add keys (the synthetic set adds ``clip`` (str)).

The reader skips images that have no label file (an interrupted write) with a warning, and rejects
label files that cannot be read or miss keys or have wrong shapes (:class:`DatasetError`, naming
the file), unless ``strict=False``, which skips them with a warning instead.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

FORMAT = "stereo_pose3d.stereo/1"
INFO_FILE = "dataset.json"
IMAGE_EXTENSIONS = (".jpg", ".png", ".webp")

# key -> (numpy dtype kind(s), shape with "J" = joints and "n" = any length; None = scalar)
LABEL_SPEC: dict[str, tuple[str, tuple | None]] = {
    "K_left": ("f", (3, 3)),
    "K_right": ("f", (3, 3)),
    "D_left": ("f", ("n",)),
    "D_right": ("f", ("n",)),
    "distortion_model": ("U", None),
    "R_left": ("f", (3, 3)),
    "R_right": ("f", (3, 3)),
    "P_left": ("f", (3, 4)),
    "P_right": ("f", (3, 4)),
    "T_world_to_cam": ("f", (4, 4)),
    "joints_3d_cam": ("f", ("J", 3)),
    "joints_3d_world": ("f", ("J", 3)),
    "joints_2d": ("f", (2, "J", 2)),
    "visibility": ("b", (2, "J")),
    "box": ("f", (2, 4)),
    "baseline": ("f", None),
    "sequence": ("U", None),
    "frame": ("iu", None),
    "time": ("f", None),
    "rectified": ("b", None),
}


class DatasetError(RuntimeError):
    """A dataset or sample that cannot be used; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------
# Small atomic file helpers
# --------------------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide datasets from other users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON via a temporary file and ``os.replace``."""
    _atomic_write(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def encode_image(rgb: np.ndarray, ext: str = ".jpg", quality: int = 95) -> bytes:
    """RGB ``(H, W, 3) uint8`` -> JPEG, WebP (lossy, ``quality`` 1-100) or PNG bytes."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    params = {
        ".jpg": [cv2.IMWRITE_JPEG_QUALITY, int(quality)],
        ".webp": [cv2.IMWRITE_WEBP_QUALITY, int(quality)],
    }.get(ext, [])
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"could not encode image as {ext}")
    return buf.tobytes()


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB ``(H, W, 3) uint8``; DatasetError if unreadable."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise DatasetError(f"{path}: unreadable image file")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


def validate_labels(
    labels: Mapping[str, Any], num_joints: int | None = None, source: str = "labels"
) -> int:
    """Check keys, dtypes and shapes of a label dict (see :data:`LABEL_SPEC`).

    Returns the number of joints; raises :class:`DatasetError` naming ``source`` otherwise.
    """
    missing = [k for k in LABEL_SPEC if k not in labels]
    if missing:
        raise DatasetError(f"{source}: missing label keys {missing}")
    J = num_joints
    for key, (kinds, shape) in LABEL_SPEC.items():
        value = np.asarray(labels[key])
        if value.dtype.kind not in kinds and not (kinds == "f" and value.dtype.kind in "iu"):
            raise DatasetError(f"{source}: {key} has dtype {value.dtype}, expected kind {kinds!r}")
        if shape is None:
            if value.shape != ():
                raise DatasetError(f"{source}: {key} must be a scalar, got shape {value.shape}")
            continue
        if len(value.shape) != len(shape):
            raise DatasetError(f"{source}: {key} has shape {value.shape}, expected {shape}")
        for dim, want in zip(value.shape, shape, strict=True):
            if want == "J":
                J = dim if J is None else J
                if dim != J:
                    raise DatasetError(f"{source}: {key} has {dim} joints, expected {J}")
            elif want != "n" and dim != want:
                raise DatasetError(f"{source}: {key} has shape {value.shape}, expected {shape}")
        if kinds == "f" and not np.all(np.isfinite(value)):
            raise DatasetError(f"{source}: {key} contains NaN or inf")
    return int(J or 0)


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, str):
        return np.array(value)
    if isinstance(value, bool | np.bool_):
        return np.array(bool(value))
    return np.asarray(value)


def labels_to_bytes(labels: Mapping[str, Any]) -> bytes:
    """Serialise a label dict as a compressed ``.npz`` archive (no pickled objects)."""
    import io

    arrays = {k: _to_numpy(v) for k, v in labels.items()}
    for k, v in arrays.items():
        if v.dtype == object:
            raise ValueError(f"label {k!r} is not a plain array (dtype object)")
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def load_labels(path: str | Path, num_joints: int | None = None) -> dict[str, Any]:
    """Read and validate a label file. Strings come back as ``str``, ``frame`` as ``int``,
    ``rectified`` as ``bool``, ``baseline``/``time`` as ``float``, arrays as numpy arrays.
    Raises :class:`DatasetError` naming the file for unreadable, truncated or invalid files."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DatasetError(f"{path}: unreadable label file (truncated or corrupt): {exc}") from None
    validate_labels(raw, num_joints, source=str(path))
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if v.shape == () and v.dtype.kind == "U":
            out[k] = str(v)
        elif v.shape == () and v.dtype.kind == "b":
            out[k] = bool(v)
        elif v.shape == () and v.dtype.kind in "iu":
            out[k] = int(v)
        elif v.shape == () and v.dtype.kind == "f":
            out[k] = float(v)
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


def sample_stem(frame: int) -> str:
    return f"{int(frame):06d}"


class StereoDatasetWriter:
    """Writes a dataset: ``dataset.json`` first, then samples (images, then labels atomically).

    Workers in other processes attach to an existing dataset with :meth:`attach` (no json write).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        source: str,
        split: str,
        skeleton: str,
        joint_names: list[str] | tuple[str, ...],
        image_size: tuple[int, int],
        extra: Mapping[str, Any] | None = None,
        image_format: str = "jpg",
        jpeg_quality: int = 95,
    ) -> None:
        self.root = Path(root)
        self.image_ext = "." + image_format.lower().lstrip(".")
        if self.image_ext not in IMAGE_EXTENSIONS:
            raise ValueError(f"image_format must be jpg, png or webp, got {image_format!r}")
        self.jpeg_quality = int(jpeg_quality)
        self.num_joints = len(joint_names)
        info = {
            "format": FORMAT,
            "source": source,
            "split": split,
            "skeleton": skeleton,
            "joint_names": list(joint_names),
            "image_size": [int(image_size[0]), int(image_size[1])],
            "image_format": self.image_ext[1:],
        }
        info.update(extra or {})
        self.info = info
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.root / INFO_FILE, info)

    @classmethod
    def attach(cls, root: str | Path, jpeg_quality: int = 95) -> StereoDatasetWriter:
        """A writer for a dataset whose ``dataset.json`` already exists."""
        self = cls.__new__(cls)
        self.root = Path(root)
        self.info = read_info(self.root)
        self.image_ext = "." + self.info.get("image_format", "jpg")
        self.jpeg_quality = int(jpeg_quality)
        self.num_joints = len(self.info["joint_names"])
        return self

    def write_sample(
        self,
        sequence: str,
        frame: int,
        left: np.ndarray,
        right: np.ndarray,
        labels: Mapping[str, Any],
    ) -> Path:
        """Write one stereo sample; returns the label path. ``labels`` gets ``sequence`` and
        ``frame`` filled in; it is validated before anything is written."""
        if not sequence or "/" in sequence or sequence.startswith("."):
            raise ValueError(f"invalid sequence name {sequence!r}")
        labels = dict(labels)
        labels["sequence"] = str(sequence)
        labels["frame"] = int(frame)
        validate_labels(labels, self.num_joints, source=f"{sequence}/{sample_stem(frame)}")
        w, h = self.info["image_size"]
        for name, img in (("left", left), ("right", right)):
            if img.shape[:2] != (h, w):
                raise ValueError(
                    f"{name} image is {img.shape[1]}x{img.shape[0]}, dataset is {w}x{h}"
                )
        seq_dir = self.root / sequence
        stem = sample_stem(frame)
        q = self.jpeg_quality
        _atomic_write(
            seq_dir / f"{stem}.left{self.image_ext}", encode_image(left, self.image_ext, q)
        )
        _atomic_write(
            seq_dir / f"{stem}.right{self.image_ext}", encode_image(right, self.image_ext, q)
        )
        label_path = seq_dir / f"{stem}.npz"
        _atomic_write(label_path, labels_to_bytes(labels))  # last: marks the sample complete
        return label_path


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------


def read_info(root: str | Path) -> dict[str, Any]:
    """``dataset.json`` of a dataset, checked for the format tag and required fields."""
    path = Path(root) / INFO_FILE
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: not found; {root} is not a stereo dataset") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable dataset description: {exc}") from None
    if info.get("format") != FORMAT:
        raise DatasetError(f"{path}: format {info.get('format')!r}, expected {FORMAT!r}")
    for key in ("skeleton", "joint_names", "image_size"):
        if key not in info:
            raise DatasetError(f"{path}: missing {key!r}")
    return info


@dataclass(frozen=True)
class SampleRef:
    """Paths of one complete sample."""

    sequence: str
    frame: int
    labels: Path
    left: Path
    right: Path


def _find_image(seq_dir: Path, stem: str, view: str) -> Path | None:
    for ext in IMAGE_EXTENSIONS:
        p = seq_dir / f"{stem}.{view}{ext}"
        if p.exists():
            return p
    return None


def list_samples(
    root: str | Path, sequences: list[str] | None = None, strict: bool = True
) -> list[SampleRef]:
    """Complete samples sorted by (sequence, frame). Images without a label file are skipped
    (with a warning: an interrupted write); a label file without both images raises
    :class:`DatasetError` (or is skipped with a warning when ``strict=False``)."""
    root = Path(root)
    read_info(root)
    wanted = set(sequences) if sequences is not None else None
    refs: list[SampleRef] = []
    orphans = 0
    for seq_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if wanted is not None and seq_dir.name not in wanted:
            continue
        stems_with_images = set()
        for p in seq_dir.iterdir():
            for view in ("left", "right"):
                for ext in IMAGE_EXTENSIONS:
                    if p.name.endswith(f".{view}{ext}"):
                        stems_with_images.add(p.name[: -len(f".{view}{ext}")])
        labelled = set()
        for label in sorted(seq_dir.glob("*.npz")):
            stem = label.stem
            if not stem.isdigit():
                continue
            labelled.add(stem)
            left, right = _find_image(seq_dir, stem, "left"), _find_image(seq_dir, stem, "right")
            if left is None or right is None:
                msg = f"{label}: label file without its {'left' if left is None else 'right'} image"
                if strict:
                    raise DatasetError(msg)
                warnings.warn(msg + "; skipped", stacklevel=2)
                continue
            refs.append(SampleRef(seq_dir.name, int(stem), label, left, right))
        orphans += len(stems_with_images - labelled)
    if orphans:
        warnings.warn(
            f"{root}: skipped {orphans} incomplete sample(s) with images but no label file",
            stacklevel=2,
        )
    return refs


def load_sample(ref: SampleRef, num_joints: int | None = None, load_images: bool = True) -> dict:
    """Labels of ``ref`` plus ``left``/``right`` RGB images ``(H, W, 3) uint8`` and ``path``."""
    sample = load_labels(ref.labels, num_joints)
    if sample["sequence"] != ref.sequence or sample["frame"] != ref.frame:
        raise DatasetError(
            f"{ref.labels}: labels say {sample['sequence']}/{sample['frame']}, "
            f"file is {ref.sequence}/{ref.frame}"
        )
    if load_images:
        sample["left"] = read_image(ref.left)
        sample["right"] = read_image(ref.right)
    sample["path"] = str(ref.labels)
    return sample


def iter_samples(
    root: str | Path,
    *,
    load_images: bool = True,
    strict: bool = True,
    sequences: list[str] | None = None,
) -> Iterator[dict]:
    """Iterate over the complete samples of a dataset (see :func:`load_sample`). With
    ``strict=False`` unreadable samples are skipped with a warning instead of raising."""
    info = read_info(root)
    J = len(info["joint_names"])
    for ref in list_samples(root, sequences, strict=strict):
        try:
            yield load_sample(ref, J, load_images)
        except DatasetError as exc:
            if strict:
                raise
            warnings.warn(f"{exc}; skipped", stacklevel=2)


class _StereoDatasetBase:
    """Map-style (torch) dataset over a stereo dataset directory.

    ``dataset[i]`` is the dict of :func:`load_sample` (numpy arrays, images ``(H, W, 3) uint8``),
    passed through ``transform`` if given. All label files are validated when the dataset is
    opened (``validate=True``), so a truncated or corrupt file fails early with its name.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        transform: Callable[[dict], Any] | None = None,
        load_images: bool = True,
        sequences: list[str] | None = None,
        strict: bool = True,
        validate: bool = True,
    ) -> None:
        self.root = Path(root)
        self.info = read_info(self.root)
        self.joint_names = tuple(self.info["joint_names"])
        self.transform = transform
        self.load_images = load_images
        refs = list_samples(self.root, sequences, strict=strict)
        if validate:
            kept = []
            for ref in refs:
                try:
                    load_labels(ref.labels, len(self.joint_names))
                    kept.append(ref)
                except DatasetError as exc:
                    if strict:
                        raise
                    warnings.warn(f"{exc}; skipped", stacklevel=2)
            refs = kept
        self.samples = refs

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        sample = load_sample(self.samples[index], len(self.joint_names), self.load_images)
        return self.transform(sample) if self.transform is not None else sample

    @property
    def sequences(self) -> list[str]:
        return sorted({r.sequence for r in self.samples})


def _stereo_dataset_class() -> type:
    try:
        from torch.utils.data import Dataset
    except ImportError:  # pragma: no cover - torch is part of the pinned environment
        return _StereoDatasetBase
    return type(
        "StereoDataset",
        (_StereoDatasetBase, Dataset),
        {"__doc__": _StereoDatasetBase.__doc__, "__module__": __name__},
    )


def __getattr__(name: str) -> Any:
    # ``StereoDataset`` subclasses torch's Dataset, created on first use so that writers (the
    # synthetic generator's worker processes, the MADS extraction) do not import torch.
    if name == "StereoDataset":
        cls = _stereo_dataset_class()
        globals()["StereoDataset"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
