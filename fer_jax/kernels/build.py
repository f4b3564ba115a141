"""Builds the oneDNN convolution library on first use and registers its XLA FFI handlers.

The shared library is compiled with g++ from onednn_conv.cc against oneDNN from the
`onednn-cpu-gomp` / `onednn-devel-cpu-gomp` packages (libdnnl under sys.prefix/lib,
headers under sys.prefix/include) and JAX's FFI headers, into the cache folder
($FER_JAX_CACHE_DIR, else ~/.cache/fer_jax) under kernels/<hash>, the hash covering the
source, the compiler command and the headers' locations: a changed source or toolchain
builds a new library, an unchanged one loads in milliseconds.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile

from fer_jax.data.cache import default_cache_dir

SOURCE = pathlib.Path(__file__).with_name("onednn_conv.cc")
LIBRARY_NAME = "libfer_onednn_conv.so"
# XLA FFI target name -> the handler symbol in the library.
TARGETS = {
    "fer_onednn_conv_forward": "FerOnednnConvForward",
    "fer_onednn_conv_backward_data": "FerOnednnConvBackwardData",
    "fer_onednn_conv_backward_weights": "FerOnednnConvBackwardWeights",
}
COMPILER_ENV = "CXX"
_BUILD_TIMEOUT_S = 300


class KernelsUnavailable(RuntimeError):
    """The oneDNN kernels cannot be used here; the message says why in one line."""


@dataclasses.dataclass(frozen=True)
class Library:
    path: pathlib.Path
    onednn_version: str


def platform_supported() -> str | None:
    """None on x86-64 Linux, else why the kernels are not offered here."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"oneDNN kernels are built for x86-64 Linux only (this is {sys.platform} {platform.machine()})"
    return None


def onednn_prefix() -> pathlib.Path:
    """Where pip puts the oneDNN packages' lib/ and include/ (the environment's prefix)."""
    return pathlib.Path(sys.prefix)


def compile_command(compiler: str, source: pathlib.Path, output: pathlib.Path) -> list[str]:
    import jax

    prefix = onednn_prefix()
    return [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-w",
            f"-I{jax.ffi.include_dir()}", f"-I{prefix / 'include'}", str(source),
            f"-L{prefix / 'lib'}", "-ldnnl", f"-Wl,-rpath,{prefix / 'lib'}", "-o", str(output)]


def _check_onednn_installed() -> None:
    prefix = onednn_prefix()
    if not (prefix / "include" / "oneapi" / "dnnl" / "dnnl.hpp").is_file():
        raise KernelsUnavailable(f"oneDNN headers not found under {prefix / 'include'} "
                                 "(pip install onednn-devel-cpu-gomp)")
    if not any((prefix / "lib").glob("libdnnl.so*")):
        raise KernelsUnavailable(f"libdnnl not found under {prefix / 'lib'} "
                                 "(pip install onednn-cpu-gomp)")


def library_path(cache_dir: pathlib.Path, compiler: str) -> pathlib.Path:
    """Where the library for this source and toolchain lives in CACHE_DIR."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update("\0".join(compile_command(compiler, SOURCE, pathlib.Path("out"))).encode())
    return cache_dir / "kernels" / digest.hexdigest()[:16] / LIBRARY_NAME


def build(cache_dir: pathlib.Path) -> pathlib.Path:
    """The library's path, compiled first if the cache has none for this source."""
    reason = platform_supported()
    if reason:
        raise KernelsUnavailable(reason)
    _check_onednn_installed()
    compiler = shutil.which(os.environ.get(COMPILER_ENV, "g++"))
    if compiler is None:
        raise KernelsUnavailable(f"no C++ compiler ({os.environ.get(COMPILER_ENV, 'g++')}) "
                                 "on PATH to build the oneDNN kernels")
    target = library_path(cache_dir, compiler)
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise KernelsUnavailable(f"cannot create {target.parent}: {err.strerror}") from None
    # Built beside the target and renamed into place: a concurrent build or a killed one
    # never leaves a half-written library under the final name.
    fd, tmp_name = tempfile.mkstemp(prefix=LIBRARY_NAME + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        result = subprocess.run(compile_command(compiler, SOURCE, pathlib.Path(tmp_name)),
                                capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S)
        if result.returncode != 0:
            first = next((line for line in result.stderr.splitlines() if "error" in line),
                         result.stderr.strip()[-300:])
            raise KernelsUnavailable(f"building the oneDNN kernels failed: {first}")
        os.replace(tmp_name, target)
    except subprocess.TimeoutExpired:
        raise KernelsUnavailable(f"building the oneDNN kernels took over {_BUILD_TIMEOUT_S} s") from None
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


@functools.cache
def load() -> Library:
    """Builds (if needed) and loads the library and registers its handlers for the CPU,
    once per process; raises KernelsUnavailable with the reason otherwise."""
    import jax

    path = build(default_cache_dir())
    try:
        library = ctypes.CDLL(str(path))
    except OSError as err:
        raise KernelsUnavailable(f"loading {path} failed: {err}") from None
    for name, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)),
                                    platform="cpu")
    version = library.fer_onednn_version()
    return Library(path=path, onednn_version=f"{version // 10000}.{version // 100 % 100}.{version % 100}")
