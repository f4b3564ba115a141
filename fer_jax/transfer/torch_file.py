"""Reads a PyTorch state dict (`torch.save(model.state_dict(), PATH)`) into numpy, without torch.

Both of torch.save's formats are read: the zip archive (PyTorch >= 1.6, the default)
and the older "legacy" stream of pickles that 2017-era torchvision weights use. The
pickle is read by a restricted unpickler that builds only dicts, tuples and tensors
(never arbitrary objects), so a weights file cannot run code, as with
torch.load(weights_only=True).
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
import zlib
from typing import Any, Callable

import ml_dtypes
import numpy as np

from fer_jax.errors import DataError

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_SIGNATURE = b"PK\x03\x04"
# Leading keys of training checkpoints that wrap the state dict.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")


class _StorageType:
    def __init__(self, name: str):
        self.dtype = _STORAGE_DTYPES[name]


class _TensorRef:
    """A tensor whose storage bytes are read after unpickling (the legacy format stores them after)."""

    def __init__(self, storage: tuple, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> _TensorRef:
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, describe_storage: Callable[[tuple], tuple]):
        super().__init__(file)
        self._describe_storage = describe_storage

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"it holds a {module}.{name} object, not only tensors (a whole pickled model or "
                "an optimizer?); save model.state_dict() instead") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported storage reference {pid!r}")
        return self._describe_storage(pid)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """name -> numpy array, from a torch.save file; a damaged or foreign file raises DataError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, "weights file not found")
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        if head == _ZIP_SIGNATURE:
            tree = _read_zip(path)
        elif head[:1] == b"\x80":
            tree = _read_legacy(path)
        else:
            raise DataError(path, "not a PyTorch weights file (neither a torch.save zip archive "
                                  "nor a legacy torch.save pickle)")
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error, KeyError,
            ValueError, TypeError, AttributeError, IndexError, UnicodeDecodeError, OSError,
            zlib.error) as err:
        raise DataError(path, f"cannot read the PyTorch weights: the file is truncated or damaged "
                              f"({type(err).__name__}: {err})") from None
    return _state_dict_from(tree, path)


def _read_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise DataError(path, "not a torch.save archive (no single data.pkl inside)")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in names:
            byteorder = archive.read(f"{prefix}byteorder").decode().strip()
        storages: dict[str, np.ndarray] = {}

        def describe(pid: tuple) -> tuple:
            _, storage_type, key, _location, numel = pid[:5]
            if key not in storages:
                raw = archive.read(f"{prefix}data/{key}")
                storages[key] = _storage_array(raw, storage_type.dtype, numel, byteorder, path)
            return (key, storage_type.dtype)

        tree = _Unpickler(io.BytesIO(archive.read(pickles[0])), describe).load()
        return _resolve(tree, lambda key: storages[key], path)


def _read_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        magic = _load_plain(f)
        if magic != _LEGACY_MAGIC:
            raise DataError(path, "not a PyTorch weights file (a pickle, but not one torch.save wrote)")
        protocol = _load_plain(f)
        if protocol != _LEGACY_PROTOCOL:
            raise DataError(path, f"unsupported legacy torch.save protocol {protocol!r}")
        sys_info = _load_plain(f)
        byteorder = "little" if sys_info.get("little_endian", True) else "big"
        described: dict[str, tuple] = {}
        views: dict[str, tuple[str, int, int]] = {}

        def describe(pid: tuple) -> tuple:
            _, storage_type, key, _location, numel = pid[:5]
            view = pid[5] if len(pid) > 5 else None
            described.setdefault(key, (storage_type.dtype, numel))
            if view is not None:  # (view key, offset, size): a slice of the root storage
                view_key, offset, size = view
                views[view_key] = (key, offset, size)
                return (view_key, storage_type.dtype)
            return (key, storage_type.dtype)

        tree = _Unpickler(f, describe).load()
        keys = _load_plain(f)
        storages: dict[str, np.ndarray] = {}
        for key in keys:
            dtype, numel = described[key]
            (count,) = struct.unpack("<q", _read_exactly(f, 8))
            if count != numel:
                raise DataError(path, f"storage {key} holds {count} elements, its tensors "
                                      f"expect {numel}: the file is damaged")
            storages[key] = _storage_array(_read_exactly(f, count * dtype.itemsize), dtype,
                                           count, byteorder, path)

        def lookup(key: str) -> np.ndarray:
            if key in views:
                root, offset, size = views[key]
                return storages[root][offset: offset + size]
            return storages[key]

        return _resolve(tree, lookup, path)


def _load_plain(f) -> Any:
    """One pickle of plain values (numbers, strings, lists, dicts): no globals, no storages."""
    return _Unpickler(f, _no_storage).load()


def _no_storage(pid: tuple) -> tuple:
    raise pickle.UnpicklingError("unexpected storage reference")


def _read_exactly(f, size: int) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise EOFError(f"expected {size} more bytes, found {len(data)}")
    return data


def _storage_array(raw: bytes, dtype: np.dtype, numel: int, byteorder: str, path: str) -> np.ndarray:
    if len(raw) != numel * dtype.itemsize:
        raise DataError(path, f"a storage holds {len(raw)} bytes, {numel * dtype.itemsize} "
                              "expected: the file is truncated or damaged")
    array = np.frombuffer(raw, dtype=dtype.newbyteorder("<" if byteorder == "little" else ">"))
    return array.astype(dtype, copy=False)


def _resolve(tree: Any, storage: Callable[[str], np.ndarray], path: str) -> Any:
    """Replaces tensor references by numpy arrays (copies: the file's buffers are released)."""
    if isinstance(tree, _TensorRef):
        key, _dtype = tree.storage
        flat = storage(key)
        extent = tree.offset + sum((n - 1) * s for n, s in zip(tree.size, tree.stride)) + 1 \
            if all(tree.size) else tree.offset
        if tree.offset < 0 or extent > len(flat):
            raise DataError(path, "a tensor reaches past the end of its storage: the file is damaged")
        strides = tuple(s * flat.itemsize for s in tree.stride)
        view = np.lib.stride_tricks.as_strided(flat[tree.offset:], shape=tree.size, strides=strides)
        return np.array(view, copy=True)
    if isinstance(tree, dict):
        return {k: _resolve(v, storage, path) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_resolve(v, storage, path) for v in tree)
    return tree


def _state_dict_from(tree: Any, path: str) -> dict[str, np.ndarray]:
    """The name -> array mapping: unwraps {'state_dict': ...} checkpoints and DataParallel's 'module.'."""
    if isinstance(tree, dict) and not _is_state_dict(tree):
        for key in _WRAPPER_KEYS:
            if key in tree and isinstance(tree[key], dict) and _is_state_dict(tree[key]):
                tree = tree[key]
                break
    if not isinstance(tree, dict) or not _is_state_dict(tree):
        raise DataError(path, "does not hold a state dict (a mapping from names to tensors); "
                              "save model.state_dict()")
    if tree and all(k.startswith("module.") for k in tree):
        tree = {k[len("module."):]: v for k, v in tree.items()}
    return dict(tree)


def _is_state_dict(tree: dict) -> bool:
    return bool(tree) and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in tree.items())
