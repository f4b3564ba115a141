"""Hostile torch.save files: out-of-bounds views, allocation and decompression bombs, fuzzing.

Every file here is crafted by hand (tests/torch_craft.py), so no PyTorch is needed.
Reads that could crash or eat memory on a broken reader run in a child process
(tests/weights_worker.py) under an address-space limit, and report their peak RSS.
"""
from __future__ import annotations

import json
import pathlib
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest

import torch_craft as tc
from peak_rss import child_env
from fer_jax.errors import DataError
from fer_jax.transfer.torch_file import read_state_dict

WORKER = pathlib.Path(__file__).with_name("weights_worker.py")
REPO = pathlib.Path(__file__).resolve().parents[1]
# The child may map this much address space; refusing a file must stay under PEAK_RSS_LIMIT.
ADDRESS_SPACE_LIMIT = 2560 << 20
PEAK_RSS_LIMIT = 1_500_000_000
GIB = 1 << 30


def _read_in_child(paths: list[pathlib.Path], tmp_path: pathlib.Path, timeout: float = 120) -> list[dict]:
    """One outcome per file ('ok', 'refused', 'crash' or 'died'), read in a memory-capped child."""
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(map(str, paths)))
    run = subprocess.run([sys.executable, str(WORKER), str(ADDRESS_SPACE_LIMIT), str(listing)],
                         capture_output=True, text=True, timeout=timeout, env=child_env())
    results, started = {}, None
    for line in run.stdout.splitlines():
        record = json.loads(line)
        if "start" in record:
            started = record["start"]
        else:
            results[record["path"]] = record
    if run.returncode != 0:
        results[started] = {"path": started, "outcome": "died", "error": f"exit {run.returncode}: "
                            + run.stderr[-2000:]}
    return [results.get(str(path), {"path": str(path), "outcome": "not reached"}) for path in paths]


def _assert_refused(record: dict, *fragments: str) -> str:
    assert record["outcome"] == "refused", record
    message = record["message"]
    assert "\n" not in message and len(message) < 600, message
    assert "do not fit in memory" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert record["peak_rss"] < PEAK_RSS_LIMIT, record
    return message


def _refusal(path) -> str:
    with pytest.raises(DataError) as err:
        read_state_dict(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message, message
    return message


def _one_tensor(path, size, stride, offset=0, numel=4, legacy=False, data=None):
    data = tc.floats(*range(numel)) if data is None else data
    tree = tc.OrderedDictOf({"w": tc.tensor("0", numel, size, stride, offset, legacy=legacy)})
    if legacy:
        tc.legacy_file(path, tree, {"0": (numel, data)})
    else:
        tc.zip_file(path, tree, {"0": data})
    return path


# ------------------------------------------------------------------------- views and bounds

def test_negative_strides_past_the_storage_are_refused_before_any_read(tmp_path):
    crash = _one_tensor(tmp_path / "crash.pth", (1000000,), (-10000,))
    leak = _one_tensor(tmp_path / "leak.pth", (64,), (-1,), offset=3)
    crash_record, leak_record = _read_in_child([crash, leak], tmp_path)
    _assert_refused(crash_record, "tensor w addresses elements", "storage of 4")
    _assert_refused(leak_record, "addresses elements -60 to 3 of a storage of 4")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("size,stride,offset", [
    ((64,), (-1,), 3),  # below the storage's first element
    ((2,), (2 ** 62,), 0),  # size x stride far past the end
    ((3,), (2,), 0),  # one element past the end
    ((2, 2), (2, 1), 1),  # an offset pushes the last element out
    ((2,), (1,), -1),  # a negative offset
    ((2 ** 31, 2 ** 31), (2 ** 33, -(2 ** 33)), 0),  # huge strides that cancel in the sum
])
def test_views_outside_their_storage_are_refused(tmp_path, legacy, size, stride, offset):
    path = _one_tensor(tmp_path / "view.pth", size, stride, offset, legacy=legacy)
    message = _refusal(path)
    assert "addresses elements" in message or "malformed" in message


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_views_inside_their_storage_read_the_right_values(tmp_path, legacy):
    path = tmp_path / "views.pth"
    tree = tc.OrderedDictOf({
        "reversed": tc.tensor("0", 6, (4,), (-1,), 4, legacy=legacy),
        "transposed": tc.tensor("0", 6, (3, 2), (1, 3), legacy=legacy),
        "empty": tc.tensor("0", 6, (0, 5), (5, 1), 9, legacy=legacy),
        "scalar": tc.tensor("0", 6, (), (), 5, legacy=legacy)})
    data = tc.floats(*range(6))
    if legacy:
        tc.legacy_file(path, tree, {"0": (6, data)})
    else:
        tc.zip_file(path, tree, {"0": data})
    read = read_state_dict(path)
    np.testing.assert_array_equal(read["reversed"], [4, 3, 2, 1])
    np.testing.assert_array_equal(read["transposed"], [[0, 3], [1, 4], [2, 5]])
    assert read["empty"].shape == (0, 5) and read["scalar"] == 5


def test_a_broadcast_view_of_a_terabyte_is_refused(tmp_path):
    path = _one_tensor(tmp_path / "broadcast.pth", (2 ** 20, 2 ** 20), (0, 0))
    assert "holds 1099511627776 elements, more than its storage's 4" in _refusal(path)


def test_many_overlapping_views_of_one_storage_are_refused(tmp_path):
    path = tmp_path / "overlap.pth"
    tree = {f"w{i}": tc.tensor("0", 1000, (990,), (1,), i) for i in range(10)}
    tc.zip_file(path, tree, {"0": bytes(4000)})
    assert "overlapping views" in _refusal(path)


def test_a_tied_weight_is_read_once_and_shared(tmp_path):
    path = tmp_path / "tied.pth"
    tc.zip_file(path, {"a": tc.tensor("0", 4, (4,), (1,)), "b": tc.tensor("0", 4, (4,), (1,))},
                {"0": tc.floats(1, 2, 3, 4)})
    read = read_state_dict(path)
    np.testing.assert_array_equal(read["a"], read["b"])


# ------------------------------------------------------------------- allocation and size bombs

def test_a_legacy_storage_of_two_to_the_forty_elements_is_refused(tmp_path):
    path = _one_tensor(tmp_path / "huge.pth", (4,), (1,), numel=2 ** 40, legacy=True, data=tc.floats(1, 2, 3, 4))
    (record,) = _read_in_child([path], tmp_path)
    _assert_refused(record, "declares 1099511627776 elements", "more than the file holds")


def _zip_with_storage_entry(path, numel: int, entry_data: bytes, method: int, declared: int):
    pickled = tc.dumps(tc.OrderedDictOf({"w": tc.tensor("0", numel, (numel,), (1,))}))
    tc.raw_zip(path, [("archive/data.pkl", pickled, 0, len(pickled), zlib.crc32(pickled)),
                      ("archive/data/0", entry_data, method, declared, 0)])
    return path


def test_decompression_bombs_are_refused_in_little_memory(tmp_path):
    bomb = tc.deflated_zeros(3 * GIB)
    assert len(bomb) < 4 << 20
    small_tensor = _zip_with_storage_entry(tmp_path / "small_tensor.pth", 4, bomb, 8, 3 * GIB)
    big_tensor = _zip_with_storage_entry(tmp_path / "big_tensor.pth", 3 * GIB // 4, bomb, 8, 3 * GIB)
    lying_size = _zip_with_storage_entry(tmp_path / "lying_size.pth", 4, bomb, 8, 16)
    pickle_bomb = tmp_path / "pickle_bomb.pth"
    tc.raw_zip(pickle_bomb, [("archive/data.pkl", bomb, 8, 3 * GIB, 0)])
    stored_claim = _zip_with_storage_entry(tmp_path / "stored_claim.pth", GIB, b"\0" * 16, 0, 4 * GIB - 4)
    records = _read_in_child([small_tensor, big_tensor, lying_size, pickle_bomb, stored_claim], tmp_path)
    _assert_refused(records[0], f"holds {3 * GIB} bytes, its tensors expect 16")
    _assert_refused(records[1], "inflate to more than 1024 MiB")
    # Only the declared 16 bytes are inflated: a result of four zeros, or a CRC refusal.
    assert records[2]["outcome"] in ("ok", "refused") and records[2]["peak_rss"] < PEAK_RSS_LIMIT, records[2]
    _assert_refused(records[3], "larger than 4 MiB")
    _assert_refused(records[4])


def test_a_forged_memo_index_does_not_allocate(tmp_path):
    path = tmp_path / "memo.pth"
    tc.zip_file(path, None, {}, pickle_bytes=b"\x80\x02N" + pickle.LONG_BINPUT + struct.pack("<I", 0x7FFFFFF0)
                + b"0}.")
    (record,) = _read_in_child([path], tmp_path)
    _assert_refused(record, "does not hold a state dict")


@pytest.mark.parametrize("opcodes", [pickle.EMPTY_DICT, pickle.MARK, pickle.EMPTY_DICT + pickle.MEMOIZE,
                                     pickle.EMPTY_SET], ids=["dicts", "marks", "memoized", "sets"])
def test_a_pickle_of_one_object_a_byte_stays_small(tmp_path, opcodes):
    from fer_jax.transfer.torch_file import MAX_PICKLE_BYTES

    path = tmp_path / "flood.pth"
    count = (MAX_PICKLE_BYTES - 16) // len(opcodes)
    tc.zip_file(path, None, {}, pickle_bytes=b"\x80\x04" + opcodes * count + pickle.STOP)
    (record,) = _read_in_child([path], tmp_path)
    _assert_refused(record)
    assert record["peak_rss"] < 800_000_000, record


# --------------------------------------------------------------------------- refused objects

def test_a_refused_object_is_named_as_refused_for_safety(tmp_path):
    path = tmp_path / "evil.pth"
    tc.zip_file(path, tc.OrderedDictOf({"w": tc.Call(tc.Global("os", "system"), ("true",))}), {})
    message = _refusal(path)
    assert "refused for safety" in message and "os.system" in message and "not only tensors" in message
    assert "truncated or damaged" not in message


def test_a_pickle_cannot_change_the_reader_for_later_files(tmp_path):
    # BUILD sets attributes on what the pickle loaded: here the FloatStorage type and the
    # rebuild function, which a shared object would carry into every later read.
    evil = tmp_path / "evil.pth"
    opcodes = (b"\x80\x02" + pickle.GLOBAL + b"torch\nFloatStorage\n" + pickle.EMPTY_DICT
               + pickle.BINUNICODE + struct.pack("<I", 5) + b"dtype" + pickle.BININT1 + b"\x07"
               + pickle.SETITEM + pickle.BUILD + pickle.POP
               + pickle.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n" + pickle.NONE
               + pickle.EMPTY_DICT + pickle.BINUNICODE + struct.pack("<I", 12) + b"__defaults__"
               + pickle.MARK + pickle.BININT1 + b"\x00" + pickle.TUPLE + pickle.SETITEM + pickle.TUPLE2
               + pickle.BUILD + pickle.STOP)
    tc.zip_file(evil, None, {}, pickle_bytes=opcodes)
    with pytest.raises(DataError):
        read_state_dict(evil)
    good = _one_tensor(tmp_path / "good.pth", (4,), (1,))
    np.testing.assert_array_equal(read_state_dict(good)["w"], [0, 1, 2, 3])


def test_the_convert_command_refuses_a_hostile_file_with_one_line(tmp_path):
    path = _one_tensor(tmp_path / "crash.pth", (1000000,), (-10000,))
    run = subprocess.run([sys.executable, "-m", "fer_jax.convert", str(path), "--arch", "resnet18",
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert run.returncode == 2, run
    assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1, run.stderr
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------- fuzzing

_SMALL = (0, 1, 2, 3, 4, 5, 8, 16, 64)
_HOSTILE = (-1, -3, -10000, 2 ** 31, 2 ** 32 + 1, 2 ** 40, 2 ** 62, 2 ** 63 + 5, -(2 ** 62))
_ODD_VALUES = (1.5, "3", None, True, (1,), [2], b"x")


def _number(rng, small=_SMALL):
    roll = rng.random()
    if roll < 0.8:
        return int(rng.choice(small))
    if roll < 0.95:
        return int(rng.choice(_HOSTILE))
    return _ODD_VALUES[rng.integers(len(_ODD_VALUES))]


def _storage_name(rng):
    names = list(tc_storage_names())
    return names[rng.integers(len(names))] if rng.random() < 0.95 else "EvilStorage"


def tc_storage_names():
    return ("FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "LongStorage",
            "IntStorage", "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage")


_ITEMSIZE = dict(zip(tc_storage_names(), (4, 8, 2, 2, 8, 4, 2, 1, 1, 1)))


def _random_view(rng, numel):
    """Mostly a contiguous view that fits, else random sizes, strides and offsets."""
    ndim = int(rng.integers(0, 4)) if rng.random() < 0.97 else 40
    if rng.random() < 0.5 and isinstance(numel, int) and 0 < numel < 4096:
        size = (numel,) if ndim else ()
        return size, (1,) if ndim else (), 0
    size = tuple(_number(rng) for _ in range(ndim))
    stride = tuple(_number(rng, (0, 1, 2, 3, -1, -2, 4, 8)) for _ in range(ndim))
    return size, stride, _number(rng, (0, 0, 0, 1, 2, 3))


def _crafted_file(rng, path):
    legacy = rng.random() < 0.4
    storages, tensors = {}, {}
    for index in range(int(rng.integers(1, 3))):
        name = _storage_name(rng)
        numel = _number(rng, (0, 1, 4, 6, 16, 64, 100))
        itemsize = _ITEMSIZE.get(name, 4)
        length = numel * itemsize if isinstance(numel, int) and 0 <= numel * itemsize <= 4096 else 16
        if rng.random() < 0.15:
            length = max(0, length + int(rng.integers(-8, 9)))
        storages[str(index)] = (name, numel, rng.bytes(length))
    for t in range(int(rng.integers(1, 5))):
        key = str(rng.integers(len(storages)))
        name, numel, _ = storages[key]
        size, stride, offset = _random_view(rng, numel)
        ref = tc.tensor(key, numel, size, stride, offset, dtype=name, legacy=legacy)
        tensors[f"layer{t}.weight"] = ref if rng.random() < 0.9 else tc.Call(
            tc.Global("torch._utils", "_rebuild_parameter"), (ref, False, tc.OrderedDictOf()))
    tree = tc.OrderedDictOf(tensors)
    shape = rng.random()
    if shape < 0.1:
        tree = {"epoch": 3, "state_dict": tree}
    elif shape < 0.15:
        tree = [tree]
    if legacy:
        counts = {key: (numel if isinstance(numel, int) and rng.random() < 0.9 else int(rng.integers(0, 99)), data)
                  for key, (_, numel, data) in storages.items()}
        tc.legacy_file(path, tree, counts)
    else:
        tc.zip_file(path, tree, {key: data for key, (_, _, data) in storages.items() if rng.random() < 0.95},
                    compress=bool(rng.random() < 0.3), prefix=["archive/", "", "x/y/"][rng.integers(3)],
                    byteorder=[b"little", b"big", b"\xff" * 40][rng.integers(3)] if rng.random() < 0.2
                    else b"little")


_OPCODE_BYTES = [op.code.encode("latin-1") for op in __import__("pickletools").opcodes]


def _opcode_soup(rng) -> bytes:
    parts = [b"\x80\x02"]
    for _ in range(int(rng.integers(1, 40))):
        roll = rng.random()
        if roll < 0.15:
            module, name = [("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict"),
                            ("torch", "FloatStorage"), ("builtins", "eval"),
                            ("numpy.core.multiarray", "_reconstruct")][rng.integers(5)]
            parts.append(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        elif roll < 0.3:
            parts.append(tc.dumps(("storage", tc.Global("torch", "FloatStorage"), "0", "cpu",
                                   _number(rng)))[2:-1] + pickle.BINPERSID)
        else:
            parts.append(_OPCODE_BYTES[rng.integers(len(_OPCODE_BYTES))] + rng.bytes(int(rng.integers(0, 6))))
    return b"".join(parts) + pickle.STOP


def _corrupt(rng, data: bytes) -> bytes:
    data = bytearray(data)
    kind = rng.integers(4)
    if kind == 0 and data:
        for _ in range(int(rng.integers(1, 8))):
            data[rng.integers(len(data))] = rng.integers(256)
    elif kind == 1:
        data = data[: rng.integers(len(data) + 1)]
    elif kind == 2 and data:
        at = int(rng.integers(len(data)))
        data[at:at] = rng.bytes(int(rng.integers(1, 64)))
    elif data:
        at, length = int(rng.integers(len(data))), int(rng.integers(1, 200))
        data[at:at] = data[at: at + length]
    return bytes(data)


def _fuzz_files(tmp_path: pathlib.Path, count: int, seed: int) -> list[pathlib.Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = tmp_path / f"fuzz{i:05d}.pth"
        kind = i % 4
        _crafted_file(rng, path)
        if kind == 1:
            path.write_bytes(_corrupt(rng, path.read_bytes()))
        elif kind == 2 and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                entries = {name: archive.read(name) for name in archive.namelist()}
            pkl = next(name for name in entries if name.endswith("data.pkl"))
            entries[pkl] = _corrupt(rng, entries[pkl]) if rng.random() < 0.5 else _opcode_soup(rng)
            with zipfile.ZipFile(path, "w") as archive:
                for name, data in entries.items():
                    archive.writestr(name, data)
        elif kind == 3 and rng.random() < 0.5:
            tc.zip_file(path, None, {"0": bytes(16)}, pickle_bytes=_opcode_soup(rng))
        paths.append(path)
    return paths


def _check_fuzz(paths, tmp_path):
    records = _read_in_child(paths, tmp_path, timeout=600)
    outcomes = {}
    for record in records:
        assert record["outcome"] in ("ok", "refused"), record
        if record["outcome"] == "refused":
            _assert_refused(record)
        outcomes[record["outcome"]] = outcomes.get(record["outcome"], 0) + 1
    assert records[-1]["peak_rss"] < PEAK_RSS_LIMIT
    # The generator must reach both ends, or it tests nothing.
    assert outcomes.get("ok", 0) >= len(paths) // 20 and outcomes.get("refused", 0) >= len(paths) // 2, outcomes


def test_fuzzed_weight_files_end_in_a_result_or_a_one_line_refusal(tmp_path):
    _check_fuzz(_fuzz_files(tmp_path, 400, seed=20), tmp_path)


@pytest.mark.slow
def test_fuzzed_weight_files_many(tmp_path):
    _check_fuzz(_fuzz_files(tmp_path, 5000, seed=7), tmp_path)


# ---------------------------------------------------------------------- converted folders

def test_a_truncated_converted_folder_is_refused_before_orbax_restores(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    from fer_jax.transfer import convert
    from fer_jax.errors import UserError

    shapes = convert.variable_shapes(convert.reference_model("resnet18"))
    rng = np.random.default_rng(0)
    variables = {c: {path: rng.normal(size=shape).astype(np.float32)
                     for path, shape in convert._flatten(tree).items()} for c, tree in shapes.items()}
    variables = {c: convert._unflatten(flat) for c, flat in variables.items()}
    out = convert.save_converted(variables, tmp_path / "converted", "resnet18", "crafted")
    values = [p for p in (out / "variables").rglob("*") if p.is_file() and p.parent.name == "d"]
    largest = max(values, key=lambda p: p.stat().st_size)
    with open(largest, "r+b") as f:
        f.truncate(largest.stat().st_size // 3)

    def must_not_restore(*args, **kwargs):
        raise AssertionError("Orbax's restore ran on a damaged folder")

    monkeypatch.setattr(ocp.StandardCheckpointer, "restore", must_not_restore)
    with pytest.raises(UserError, match="damaged or incomplete") as err:
        convert.read_pretrained(out, "resnet18")
    assert "\n" not in str(err.value)
