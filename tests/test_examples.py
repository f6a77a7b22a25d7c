"""The documented examples run as documented (offline, against the fake upstream)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cookbook_seed_example_demo():
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "cookbook_seed.py"), "--demo", "--samples", "3"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    lines = {ln.split()[0] + (" " + ln.split()[1] if ln.startswith("without") else ""): ln.split()
             for ln in r.stdout.splitlines()[2:]}
    without, seeded = lines["without seed"], lines["seed=123"]
    assert without[2] == "0%" and float(without[3]) < 1.0 and float(without[4]) > 0  # unseeded samples differ
    assert seeded[1] == "100%" and float(seeded[2]) == 1.0 and float(seeded[3]) == 0.0  # seeded ones do not
