"""Runs a command under an address-space limit and reports its exit status and peak RSS.

python tests/peak_rss.py LIMIT_BYTES COMMAND...: prints one JSON line
{"returncode": ..., "peak_rss": bytes} on stdout; the command's own output goes to stderr.
A process of its own, so the peak is this command's alone, not the test runner's. The
hostile-input tests call it through run_capped, and their own workers read own_peak_rss.
"""
from __future__ import annotations

import json
import os
import pathlib
import resource
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    """The environment for a child process that imports fer_jax from this checkout."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def run_capped(limit: int, command: list[str], timeout: float = 600) -> tuple[dict, str]:
    """COMMAND run by this script under LIMIT bytes of address space, from the checkout:
    ({"returncode": ..., "peak_rss": bytes}, the command's standard error)."""
    run = subprocess.run([sys.executable, __file__, str(limit), *command], capture_output=True,
                         text=True, timeout=timeout, env=child_env(), cwd=REPO)
    return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr


def own_peak_rss() -> int:
    """This process's peak resident memory in bytes, counted from its exec.

    Linux's ru_maxrss of a process also keeps the resident size its parent had when it
    was forked (a child of a test runner holding 3 GB reports 3 GB), so the high-water
    mark of the process's own address space (VmHWM) is read where /proc has it.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(limit: int, command: list[str]) -> None:
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    run = subprocess.run(command, stdout=sys.stderr, preexec_fn=cap)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"returncode": run.returncode, "peak_rss": peak}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
