"""Running the seedtape command line in a child process."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(
    *args: object,
    store: str | os.PathLike | None = None,
    input: bytes | str | None = None,
    timeout: float = 120.0,
    check: bool = False,
    text: bool = False,
    env: dict[str, str] | None = None,
    **kw,
) -> subprocess.CompletedProcess:
    """``python -m seedtape *args [--store STORE]``, its output captured (bytes unless ``text``).

    The child does not inherit ``SEEDTAPE_*`` variables from the environment that runs the tests
    (``env`` adds variables on top); its stdin is ``input``, or empty. With ``check`` a non-zero
    exit fails the test with the command's output. Other keywords go to ``subprocess.run``.
    """
    cmd = [sys.executable, "-m", "seedtape", *map(str, args)]
    if store is not None:
        cmd += ["--store", str(store)]
    if isinstance(input, str) and not text:
        input = input.encode()
    base = {k: v for k, v in os.environ.items() if not k.startswith("SEEDTAPE_")}
    out = subprocess.run(
        cmd,
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        timeout=timeout,
        text=text,
        env={**base, **(env or {})},
        **kw,
    )
    if check:
        assert out.returncode == 0, (
            f"`seedtape {' '.join(cmd[3:])}` exited with {out.returncode}\n"
            f"stdout: {out.stdout[-800:]!r}\nstderr: {out.stderr[-800:]!r}"
        )
    return out
