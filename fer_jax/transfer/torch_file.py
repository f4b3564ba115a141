"""Reads a PyTorch state dict (`torch.save(model.state_dict(), PATH)`) into numpy, without torch.

Both of torch.save's formats are read: the zip archive (PyTorch >= 1.6, the default)
and the older "legacy" stream of pickles that 2017-era torchvision weights use.

The file is untrusted input, and reading it keeps these promises:
- The pickle is read by a restricted unpickler (the pure-Python one, whose memo is a
  dict, so a forged memo index cannot make it allocate) that builds only dicts,
  tuples and tensors, never arbitrary objects, so a file cannot run code, as with
  torch.load(weights_only=True).
- Every tensor view is checked against its storage before any array is built: the
  lowest and the highest element it addresses (negative strides and offsets
  included) must lie inside the storage, and a view may not hold more elements than
  its storage (a broadcast of a few values to terabytes).
- Sizes are checked before bytes are read: a storage's zip entry must declare exactly
  the bytes its tensors expect, uncompressed entries may not claim more bytes than the
  file holds, compressed ones (torch.save never writes them) inflate to at most
  MAX_INFLATED_BYTES in all, a legacy storage's byte count must fit in what is left of
  the file, the pickle itself is at most MAX_PICKLE_BYTES, and the arrays built hold
  at most twice the bytes of the storages they come from. Entries are read with
  exactly the declared size as a cap.
Anything else is refused with one DataError line; memory while refusing stays small.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import math
import os
import pickle
import struct
import zipfile
import zlib
from typing import Any, Callable, NamedTuple

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

# A state dict's pickle takes ~200 bytes a tensor; a hostile one can make each byte an
# object of up to ~100 bytes, so this also bounds the unpickler's memory (~400 MB).
MAX_PICKLE_BYTES = 4 << 20
MAX_INFLATED_BYTES = 1 << 30
_MAX_DIMS = 32
_READ_CHUNK = 16 << 20
_OUTPUT_FACTOR = 2  # tied weights and slices of one storage, never more


class _Refused(Exception):
    """The file is readable but holds something this reader will not build."""


# Named tuples, not dataclasses: a pickle's BUILD opcode can change an object's fields
# through __setstate__ or __dict__, and a tuple has neither.
class _StorageType(NamedTuple):
    dtype: np.dtype


class _StorageRef(NamedTuple):
    """What a tensor's storage reference resolves to: elements [start, start + numel) of `key`."""
    key: str
    dtype: np.dtype
    start: int
    numel: int


class _TensorRef(NamedTuple):
    """A tensor whose bytes are read once every view is known to be safe."""
    storage: Any
    offset: Any
    size: Any
    stride: Any


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> _TensorRef:
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
    return data


def _fresh(function: Callable) -> Callable:
    # A pickle's BUILD opcode can set attributes on what find_class returns, so each
    # lookup gets its own object and nothing shared is ever changed.
    return lambda *args: function(*args)


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): lambda: _fresh(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): lambda: _fresh(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): lambda: _fresh(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): lambda: _fresh(_rebuild_parameter),
    **{("torch", name): (lambda dtype=dtype: _StorageType(dtype)) for name, dtype in _STORAGE_DTYPES.items()},
}


def _refuse_opcode(unpickler) -> None:
    raise pickle.UnpicklingError("a set or bytearray opcode, which torch.save never writes")


# The pure-Python unpickler allocates a BYTEARRAY8's declared length before reading it,
# and an empty set costs 216 bytes for one opcode byte: neither is in a state dict.
_REFUSED_OPCODES = (pickle.BYTEARRAY8, pickle.EMPTY_SET, pickle.ADDITEMS, pickle.FROZENSET)


class _Unpickler(pickle._Unpickler):  # the pure-Python unpickler: see the module docstring
    dispatch = {**pickle._Unpickler.dispatch, **{op[0]: _refuse_opcode for op in _REFUSED_OPCODES}}

    def __init__(self, file, describe_storage: Callable[[tuple], _StorageRef]):
        super().__init__(file)
        self._describe_storage = describe_storage

    def find_class(self, module: str, name: str):
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            what = _shorten(f"{module}.{name}")
            raise _Refused(f"refused for safety: it holds a {what} object, not only tensors "
                           "(a whole pickled model or an optimizer?), and only tensors, dicts and "
                           "plain values are read; save model.state_dict() instead")
        return factory()

    def persistent_load(self, pid):
        if not (type(pid) is tuple and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and _is_count(pid[4])
                and any(pid[1].dtype is dtype for dtype in _STORAGE_DTYPES.values())):
            raise pickle.UnpicklingError(f"unsupported storage reference {_shorten(repr(pid))}")
        return self._describe_storage(pid)


class _CappedReader:
    """A file's read/readline that refuse to go past `limit` bytes (the legacy pickles)."""

    def __init__(self, f, limit: int):
        self._f, self._left = f, limit

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(self._left + 1 if size < 0 or size > self._left else size)
        return self._count(data)

    def readline(self, size: int = -1) -> bytes:
        return self._count(self._f.readline(self._left + 1))

    def _count(self, data: bytes) -> bytes:
        self._left -= len(data)
        if self._left < 0:
            raise _Refused(f"its pickle is larger than {MAX_PICKLE_BYTES >> 20} MiB: refused")
        return data


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """name -> numpy array, from a torch.save file; a damaged, hostile or foreign file raises DataError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, "weights file not found")
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        if head == _ZIP_SIGNATURE:
            return _read_zip(path)
        if head[:1] == b"\x80":
            return _read_legacy(path)
        raise DataError(path, "not a PyTorch weights file (neither a torch.save zip archive "
                              "nor a legacy torch.save pickle)")
    except DataError:
        raise
    except _Refused as err:
        raise DataError(path, _one_line(str(err))) from None
    except MemoryError:
        raise DataError(path, "cannot read the PyTorch weights: they do not fit in memory") from None
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error, KeyError,
            ValueError, TypeError, AttributeError, IndexError, UnicodeDecodeError, OSError,
            zlib.error, RecursionError, OverflowError, NotImplementedError) as err:
        raise DataError(path, "cannot read the PyTorch weights: the file is truncated or damaged "
                              f"({type(err).__name__}: {_one_line(str(err))})") from None


# ------------------------------------------------------------------------------ zip format

def _read_zip(path: str) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise DataError(path, "not a torch.save archive (no single data.pkl inside)")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = _zip_byteorder(archive, prefix, names)
        inflated = _Budget(MAX_INFLATED_BYTES, "its compressed entries inflate to more than "
                                               f"{MAX_INFLATED_BYTES >> 20} MiB: refused")
        pickled = _read_entry(archive, archive.getinfo(pickles[0]), None, inflated, path,
                              limit=MAX_PICKLE_BYTES)
        storages: dict[str, _StorageRef] = {}

        def describe(pid: tuple) -> _StorageRef:
            return _remember(storages, _StorageRef(pid[2], pid[1].dtype, 0, pid[4]))

        state = _state_dict_from(_Unpickler(io.BytesIO(pickled), describe).load(), path)
        del pickled
        plan = _plan(state, storages, path)
        stored = _Budget(os.path.getsize(path), "its storages claim more bytes than the file holds "
                                                "(overlapping zip entries?): refused")
        infos = {key: archive.getinfo(f"{prefix}data/{key}") for key in plan.storages}
        for key, storage in plan.storages.items():
            _check_entry(infos[key], storage, stored, inflated, path)
        flats = {key: _as_array(_read_entry(archive, infos[key], storage.numel * storage.dtype.itemsize,
                                            None, path), storage.dtype, byteorder)
                 for key, storage in plan.storages.items()}
        return _build(state, plan, flats)


def _zip_byteorder(archive: zipfile.ZipFile, prefix: str, names: list[str]) -> str:
    if f"{prefix}byteorder" not in names:
        return "little"
    with archive.open(f"{prefix}byteorder") as entry:
        value = entry.read(16).strip()
    if value not in (b"little", b"big"):
        raise ValueError(f"byteorder entry holds {_shorten(repr(value))}")
    return value.decode()


class _Budget:
    """Bytes left to spend on one kind of read; spending past it refuses the file."""

    def __init__(self, limit: int, message: str):
        self.left, self.message = limit, message

    def spend(self, amount: int) -> None:
        self.left -= amount
        if self.left < 0:
            raise _Refused(self.message)


def _check_entry(info: zipfile.ZipInfo, storage: _StorageRef, stored: _Budget, inflated: _Budget,
                 path: str) -> None:
    expected = storage.numel * storage.dtype.itemsize
    if info.file_size != expected:
        raise DataError(path, f"storage {_shorten(storage.key)} holds {info.file_size} bytes, its "
                              f"tensors expect {expected}: the file is truncated or damaged")
    if info.compress_type == zipfile.ZIP_STORED:
        stored.spend(max(info.file_size, info.compress_size))
    else:
        stored.spend(info.compress_size)
        inflated.spend(info.file_size)


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, expected: int | None,
                inflated: _Budget | None, path: str, limit: int | None = None) -> bytearray:
    """The entry's bytes, never reading more than its declared (and checked) size."""
    size = info.file_size
    if limit is not None and size > limit:
        raise _Refused(f"its pickle {info.filename} is larger than {limit >> 20} MiB: refused")
    if inflated is not None and info.compress_type != zipfile.ZIP_STORED:
        inflated.spend(size)
    if expected is not None and size != expected:
        raise ValueError(f"entry {info.filename} holds {size} bytes, {expected} expected")
    if info.compress_type == zipfile.ZIP_STORED and size > os.path.getsize(path):
        raise EOFError(f"entry {info.filename} claims {size} bytes, more than the file holds")
    buffer = bytearray(size)
    view = memoryview(buffer)
    with archive.open(info) as entry:
        filled = 0
        while filled < size:
            chunk = entry.read(min(_READ_CHUNK, size - filled))
            if not chunk:
                raise EOFError(f"entry {info.filename} ends after {filled} of {size} bytes")
            view[filled: filled + len(chunk)] = chunk
            filled += len(chunk)
    return buffer


# --------------------------------------------------------------------------- legacy format

def _read_legacy(path: str) -> dict[str, np.ndarray]:
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        if _load_plain(f) != _LEGACY_MAGIC:
            raise DataError(path, "not a PyTorch weights file (a pickle, but not one torch.save wrote)")
        protocol = _load_plain(f)
        if protocol != _LEGACY_PROTOCOL:
            raise DataError(path, f"unsupported legacy torch.save protocol {_shorten(repr(protocol))}")
        sys_info = _load_plain(f)
        byteorder = "little" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) \
            else "big"
        roots: dict[str, _StorageRef] = {}

        def describe(pid: tuple) -> _StorageRef:
            root = _remember(roots, _StorageRef(pid[2], pid[1].dtype, 0, pid[4]))
            view = pid[5] if len(pid) > 5 else None
            if view is None:
                return root
            if not (isinstance(view, tuple) and len(view) == 3 and _is_count(view[1])
                    and _is_count(view[2]) and view[1] + view[2] <= root.numel):
                raise ValueError(f"storage view {_shorten(repr(view))} lies outside storage {root.key}")
            return _StorageRef(root.key, root.dtype, view[1], view[2])

        state = _state_dict_from(_Unpickler(_CappedReader(f, MAX_PICKLE_BYTES), describe).load(), path)
        keys = _load_plain(f)
        if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
            raise ValueError("the list of storage keys is not a list of strings")
        plan = _plan(state, roots, path)
        flats = {}
        for key in keys:
            if key not in roots:
                raise KeyError(f"storage {_shorten(key)} that no tensor uses")
            root = roots[key]
            (count,) = struct.unpack("<q", _read_exactly(f, 8))
            if count != root.numel:
                raise DataError(path, f"storage {_shorten(key)} holds {count} elements, its tensors "
                                      f"expect {root.numel}: the file is damaged")
            nbytes = count * root.dtype.itemsize
            if nbytes > file_size - f.tell():
                raise DataError(path, f"storage {_shorten(key)} declares {count} elements ({nbytes} "
                                      "bytes), more than the file holds: the file is truncated or damaged")
            if key in plan.storages:
                flats[key] = _as_array(_read_exactly(f, nbytes), root.dtype, byteorder)
            else:
                f.seek(nbytes, io.SEEK_CUR)
        missing = sorted(set(plan.storages) - set(flats))
        if missing:
            raise EOFError(f"storage {_shorten(missing[0])} is not in the file")
        return _build(state, plan, flats)


def _load_plain(f) -> Any:
    """One pickle of plain values (numbers, strings, lists, dicts): no storages."""
    return _Unpickler(_CappedReader(f, MAX_PICKLE_BYTES), _no_storage).load()


def _no_storage(pid: tuple) -> _StorageRef:
    raise pickle.UnpicklingError("unexpected storage reference")


def _read_exactly(f, size: int) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise EOFError(f"expected {size} more bytes, found {len(data)}")
    return data


# ------------------------------------------------------------------ views, checked then built

def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _remember(storages: dict[str, _StorageRef], storage: _StorageRef) -> _StorageRef:
    known = storages.setdefault(storage.key, storage)
    if known != storage:
        raise ValueError(f"storage {_shorten(storage.key)} is described twice, differently")
    return known


@dataclasses.dataclass(frozen=True)
class _Plan:
    storages: dict[str, _StorageRef]  # the root storages the state dict's tensors use


def _plan(state: dict[str, _TensorRef], roots: dict[str, _StorageRef], path: str) -> _Plan:
    """Checks every view against its storage and the total size; nothing has been read yet."""
    storages: dict[str, _StorageRef] = {}
    views, built_bytes = set(), 0
    for name, ref in state.items():
        numel = _check_view(ref, name, path)
        storage, root = ref.storage, roots[ref.storage.key]
        if not (_is_count(storage.start) and storage.start + storage.numel <= root.numel):
            raise ValueError(f"tensor {_shorten(name)} uses a storage view outside its storage")
        storages[storage.key] = root
        view = (storage.key, storage.start + ref.offset, ref.size, ref.stride, storage.dtype)
        if view not in views:
            views.add(view)
            built_bytes += numel * storage.dtype.itemsize
    storage_bytes = sum(s.numel * s.dtype.itemsize for s in storages.values())
    if built_bytes > _OUTPUT_FACTOR * storage_bytes:
        raise DataError(path, f"its tensors hold {built_bytes} bytes, more than {_OUTPUT_FACTOR} times "
                              f"the {storage_bytes} bytes of their storages (overlapping views): refused")
    return _Plan(storages)


def _check_view(ref: _TensorRef, name: str, path: str) -> int:
    """The view's element count, once its lowest and highest element are inside its storage."""
    storage, size, stride, offset = ref.storage, ref.size, ref.stride, ref.offset
    if not isinstance(storage, _StorageRef):
        raise ValueError(f"tensor {_shorten(name)} has no storage")
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
            and len(size) <= _MAX_DIMS and all(_is_count(n) and n < 2 ** 62 for n in size)
            and all(type(s) is int for s in stride) and _is_count(offset)):
        raise ValueError(f"tensor {_shorten(name)} has a malformed size, stride or offset")
    numel = math.prod(size)
    if numel == 0:
        return 0
    low = offset + sum((n - 1) * s for n, s in zip(size, stride) if s < 0)
    high = offset + sum((n - 1) * s for n, s in zip(size, stride) if s > 0)
    if low < 0 or high >= storage.numel:
        raise DataError(path, f"tensor {_shorten(name)} addresses elements {low} to {high} of a "
                              f"storage of {storage.numel}: the file is damaged or hostile")
    if numel > storage.numel:
        raise DataError(path, f"tensor {_shorten(name)} holds {numel} elements, more than its "
                              f"storage's {storage.numel} (a broadcast view): refused")
    return numel


def _as_array(raw: bytes | bytearray, dtype: np.dtype, byteorder: str) -> np.ndarray:
    if dtype == np.bool_:
        return np.frombuffer(raw, dtype=np.uint8) != 0
    array = np.frombuffer(raw, dtype=dtype.newbyteorder("<" if byteorder == "little" else ">"))
    return array.astype(dtype, copy=False)


def _build(state: dict[str, _TensorRef], plan: _Plan, flats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Copies each (checked) view out of its storage; identical views share one array."""
    built: dict[tuple, np.ndarray] = {}
    out = {}
    for name, ref in state.items():
        storage = ref.storage
        view = (storage.key, storage.start + ref.offset, ref.size, ref.stride, storage.dtype)
        if view not in built:
            flat = flats[storage.key]
            start = storage.start + ref.offset
            if math.prod(ref.size) == 0:
                built[view] = np.zeros(ref.size, dtype=flat.dtype)
            else:
                strides = tuple(s * flat.itemsize for s in ref.stride)
                built[view] = np.array(np.lib.stride_tricks.as_strided(
                    flat[start:], shape=ref.size, strides=strides, writeable=False), copy=True)
        out[name] = built[view]
    return out


# ----------------------------------------------------------------------------- the state dict

def _state_dict_from(tree: Any, path: str) -> dict[str, _TensorRef]:
    """The name -> tensor mapping: unwraps {'state_dict': ...} checkpoints and DataParallel's 'module.'."""
    if isinstance(tree, dict) and not _is_state_dict(tree):
        for key in _WRAPPER_KEYS:
            if key in tree and isinstance(tree[key], dict) and _is_state_dict(tree[key]):
                tree = tree[key]
                break
    if not isinstance(tree, dict) or not _is_state_dict(tree):
        raise DataError(path, "does not hold a state dict (a mapping from names to tensors); "
                              "save model.state_dict()")
    if all(k.startswith("module.") for k in tree):
        tree = {k[len("module."):]: v for k, v in tree.items()}
    return dict(tree)


def _is_state_dict(tree: dict) -> bool:
    return bool(tree) and all(isinstance(k, str) and isinstance(v, _TensorRef) for k, v in tree.items())


def _one_line(text: str) -> str:
    return _shorten(" ".join(text.split()), 300)


def _shorten(text: str, limit: int = 60) -> str:
    """TEXT cut to LIMIT characters, with what cannot be printed (a file's bytes) escaped."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "..."
