"""Writes torch.save files by hand (no PyTorch needed), so tests can craft hostile ones.

A small pickle writer emits the opcodes torch.save's pickles use; `zip_file` and
`legacy_file` wrap a pickled tree and storage bytes in torch.save's two formats.
"""
from __future__ import annotations

import dataclasses
import io
import pickle
import struct
import zipfile
import zlib
from typing import Any, Mapping

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclasses.dataclass(frozen=True)
class Global:
    module: str
    name: str


@dataclasses.dataclass(frozen=True)
class Call:
    """REDUCE: func(*args)."""
    func: Any
    args: tuple


@dataclasses.dataclass(frozen=True)
class PersistentId:
    value: Any


@dataclasses.dataclass(frozen=True)
class Raw:
    """Opcodes inserted verbatim."""
    data: bytes


class OrderedDictOf(dict):
    """Pickled as collections.OrderedDict() followed by SETITEMS, as torch.save writes it."""


def dumps(obj: Any) -> bytes:
    out = io.BytesIO()
    out.write(b"\x80\x02")
    _emit(obj, out)
    out.write(pickle.STOP)
    return out.getvalue()


def _emit(obj: Any, out: io.BytesIO) -> None:
    if obj is None:
        out.write(pickle.NONE)
    elif obj is True or obj is False:
        out.write(pickle.NEWTRUE if obj else pickle.NEWFALSE)
    elif isinstance(obj, int):
        if -2 ** 31 <= obj < 2 ** 31:
            out.write(pickle.BININT + struct.pack("<i", obj))
        else:
            data = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
            out.write(pickle.LONG1 + bytes([len(data)]) + data)
    elif isinstance(obj, float):
        out.write(pickle.BINFLOAT + struct.pack(">d", obj))
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        out.write(pickle.BINUNICODE + struct.pack("<I", len(data)) + data)
    elif isinstance(obj, bytes):
        out.write(pickle.SHORT_BINBYTES + bytes([len(obj)]) + obj if len(obj) < 256
                  else pickle.BINBYTES + struct.pack("<I", len(obj)) + obj)
    elif isinstance(obj, Raw):
        out.write(obj.data)
    elif isinstance(obj, Global):
        out.write(pickle.GLOBAL + obj.module.encode() + b"\n" + obj.name.encode() + b"\n")
    elif isinstance(obj, Call):
        _emit(obj.func, out)
        _emit(tuple(obj.args), out)
        out.write(pickle.REDUCE)
    elif isinstance(obj, PersistentId):
        _emit(obj.value, out)
        out.write(pickle.BINPERSID)
    elif isinstance(obj, tuple):
        out.write(pickle.MARK)
        for item in obj:
            _emit(item, out)
        out.write(pickle.TUPLE)
    elif isinstance(obj, list):
        out.write(pickle.EMPTY_LIST + pickle.MARK)
        for item in obj:
            _emit(item, out)
        out.write(pickle.APPENDS)
    elif isinstance(obj, dict):
        if isinstance(obj, OrderedDictOf):
            _emit(Call(Global("collections", "OrderedDict"), ()), out)
        else:
            out.write(pickle.EMPTY_DICT)
        if obj:
            out.write(pickle.MARK)
            for key, value in obj.items():
                _emit(key, out)
                _emit(value, out)
            out.write(pickle.SETITEMS)
    else:
        raise TypeError(f"cannot emit {type(obj).__name__}")


def storage(key: str, numel: int, dtype: str = "FloatStorage", view: Any = "absent") -> PersistentId:
    """A storage reference; `view` (legacy only) is (view key, offset, size) or None."""
    pid = ("storage", Global("torch", dtype), key, "cpu", numel)
    return PersistentId(pid if view == "absent" else pid + (view,))


def tensor(key: str, numel: int, size: tuple, stride: tuple, offset: int = 0,
           dtype: str = "FloatStorage", legacy: bool = False) -> Call:
    if legacy:
        return Call(Global("torch._utils", "_rebuild_tensor"),
                    (storage(key, numel, dtype, view=None), offset, tuple(size), tuple(stride)))
    return Call(Global("torch._utils", "_rebuild_tensor_v2"),
                (storage(key, numel, dtype), offset, tuple(size), tuple(stride), False,
                 Call(Global("collections", "OrderedDict"), ())))


def zip_file(path, tree: Any, storages: Mapping[str, bytes], *, compress: bool = False,
             prefix: str = "archive/", byteorder: bytes = b"little",
             pickle_bytes: bytes | None = None) -> None:
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        archive.writestr(f"{prefix}data.pkl", dumps(tree) if pickle_bytes is None else pickle_bytes)
        archive.writestr(f"{prefix}byteorder", byteorder)
        for key, data in storages.items():
            archive.writestr(f"{prefix}data/{key}", data)
        archive.writestr(f"{prefix}version", b"3\n")


def legacy_file(path, tree: Any, storages: Mapping[str, tuple[int, bytes]], *,
                keys: list | None = None) -> None:
    """storages: key -> (the element count written before the bytes, the bytes)."""
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    with open(path, "wb") as f:
        for part in (LEGACY_MAGIC, 1001, sys_info, tree, list(storages) if keys is None else keys):
            f.write(dumps(part))
        for count, data in storages.values():
            f.write(struct.pack("<Q", count % 2 ** 64) + data)  # counts wrap, as a C writer would


def floats(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def raw_zip(path, entries: list[tuple[str, bytes, int, int, int]]) -> None:
    """A zip written field by field, so declared sizes and CRCs can lie.

    entries: (name, bytes as stored in the archive, method (0 stored, 8 deflated),
    declared uncompressed size, declared crc32).
    """
    directory = []
    with open(path, "wb") as f:
        for name, data, method, file_size, crc in entries:
            offset = f.tell()
            encoded = name.encode()
            f.write(struct.pack(zipfile.structFileHeader, zipfile.stringFileHeader, 20, 0, 0, method,
                                0, 0x21, crc, len(data), file_size, len(encoded), 0))
            f.write(encoded + data)
            directory.append(struct.pack(zipfile.structCentralDir, zipfile.stringCentralDir, 20, 0, 20, 0,
                                         0, method, 0, 0x21, crc, len(data), file_size, len(encoded),
                                         0, 0, 0, 0, 0, offset) + encoded)
        start = f.tell()
        f.write(b"".join(directory))
        f.write(struct.pack(zipfile.structEndArchive, zipfile.stringEndArchive, 0, 0, len(entries),
                            len(entries), f.tell() - start, start, 0))


def deflated_zeros(size: int, chunk: int = 16 << 20) -> bytes:
    """Raw deflate data inflating to SIZE zero bytes (a multiple of CHUNK), built in a fraction of a second.

    After a full flush the compressor starts afresh, so every chunk compresses to the same bytes.
    """
    assert size % chunk == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(chunk)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * (size // chunk - 1) + compressor.compress(zeros) + compressor.flush(zlib.Z_FINISH)
