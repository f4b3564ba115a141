"""One run per run folder: an OS lock on WORKDIR/run.lock for as long as the run lasts.

The lock is `fcntl.flock`, which the kernel releases when its process ends however it
ends, so a killed run never blocks its own resumption. The file names the holder (pid
and command line) for the refusal message. In a multi-host run only process 0 takes
it: the other processes of the same run share the folder.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import sys
from typing import Iterator

from fer_jax.errors import UserError

LOCK_FILE = "run.lock"


class WorkdirInUse(UserError):
    """Another live process is training into the same folder."""


def _holder(handle) -> str:
    handle.seek(0)
    text = handle.read().strip()
    return text or "a process that has not written its name yet"


@contextlib.contextmanager
def locked_workdir(workdir: str | os.PathLike, *, take: bool = True) -> Iterator[None]:
    """Holds WORKDIR's lock for the body; WorkdirInUse at once if another process holds it.
    take=False (processes other than 0 of a multi-host run) only creates the folder."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not take:
        yield
        return
    # "a+": opening must not empty the file before the lock says whose it is.
    with open(workdir / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirInUse(f"{workdir} is in use by another run ({_holder(handle)}); wait for "
                               "it to end or use another --workdir") from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}: {' '.join([sys.executable, *sys.argv])}\n")
            handle.flush()
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
