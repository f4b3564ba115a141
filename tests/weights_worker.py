"""Reads torch.save files in a memory-capped child process, one JSON line per file.

python tests/weights_worker.py LIMIT_BYTES LIST_FILE: LIST_FILE names one file a line.
Each file gets a {"start": ...} line before it is read, so a crash that kills the
process still says which file did it.
"""
from __future__ import annotations

import json
import resource
import sys
import traceback

from peak_rss import own_peak_rss  # this script's folder is on sys.path


def main(limit: int, list_file: str) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from fer_jax.errors import UserError
    from fer_jax.transfer.torch_file import read_state_dict

    with open(list_file) as f:
        paths = f.read().split("\n")
    for path in filter(None, paths):
        print(json.dumps({"start": path}), flush=True)
        try:
            state = read_state_dict(path)
            outcome = {"outcome": "ok", "tensors": len(state),
                       "bytes": sum(int(value.nbytes) for value in state.values())}
        except UserError as err:
            outcome = {"outcome": "refused", "message": str(err)}
        except BaseException:  # noqa: BLE001 - the test reports whatever escaped
            outcome = {"outcome": "crash", "error": traceback.format_exc()}
        rss = own_peak_rss()
        print(json.dumps({"path": path, "peak_rss": rss, **outcome}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
