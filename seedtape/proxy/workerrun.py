"""What the workers of one `seedtape serve --workers N` share: a run directory.

The supervisor (seedtape/cli/workers.py) makes a private directory per run and names it
to every worker in the environment (``SEEDTAPE_WORKER_RUN``, with the worker's number in
``SEEDTAPE_WORKER``). In it live the occurrence counter of ``--repeats sequence``
(seedtape/proxy/key/occurrences.py) and, once a worker stopped, the (key, fingerprint)
pairs it served, which the supervisor joins into the one ``--report-unused`` report.
Without that variable a process is a proxy of its own and keeps all of this in memory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

RUN_ENV = "SEEDTAPE_WORKER_RUN"
INDEX_ENV = "SEEDTAPE_WORKER"
_SERVED = "served-{}.json"


@dataclass(frozen=True)
class WorkerRun:
    directory: Path
    index: int  # 1..N

    @property
    def occurrences(self) -> Path:
        return self.directory / "occurrences"

    def save_served(self, served: set[tuple[str, str]]) -> None:
        """What this worker replayed or recorded, written once it stopped (atomically: whole or absent)."""
        path = self.directory / _SERVED.format(self.index)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(served)))
        os.replace(tmp, path)


def current() -> WorkerRun | None:
    """This process's run, when it is a worker of `seedtape serve --workers N`."""
    directory = os.environ.get(RUN_ENV, "")
    if not directory:
        return None
    return WorkerRun(Path(directory), int(os.environ.get(INDEX_ENV, "1") or 1))


def served_by(directory: Path, workers: int) -> tuple[set[tuple[str, str]], list[int]]:
    """The union of what the workers served, and the numbers of those that wrote nothing."""
    union: set[tuple[str, str]] = set()
    missing = []
    for i in range(1, workers + 1):
        try:
            pairs = json.loads((directory / _SERVED.format(i)).read_text())
        except (OSError, ValueError):
            missing.append(i)
            continue
        union.update((str(k), str(fp)) for k, fp in pairs)
    return union, missing
