"""The systemd units: ``systemd-analyze verify`` clean, security exposure <= 2.5 each.

This machine (like CI) is a container without systemd as PID 1, so both run
offline: ``verify --root`` on a throw-away root holding the machine's own
unit tree (for sysinit.target and friends), our units in etc/systemd/system
and an executable at each Exec*= path (verify checks they exist; where pip
puts spoold is the installer's business), and ``security --offline=true``
on the unit files.  Skipped, saying so, where systemd-analyze is missing
(.ci/run installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
SERVICES = sorted(p.name for p in UNITS.glob("*.service"))
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
MAX_EXPOSURE = 2.5

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze is not installed (Debian: systemd)")


def _executables(unit: Path) -> set[str]:
    paths = set()
    for line in unit.read_text().splitlines():
        match = re.match(r"Exec\w+=[-@:+!]*(/\S+)", line)
        if match:
            paths.add(match.group(1))
    return paths


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A file system root with the system's units, ours, and our Exec*= programs."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    installed = root / "etc/systemd/system"
    installed.mkdir(parents=True)
    for unit in [*UNITS.glob("*.service"), *UNITS.glob("*.timer")]:
        shutil.copy(unit, installed)
        for program in _executables(unit):
            stub = root / program.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)
    return root


def test_the_units_we_ship():
    assert SERVICES == ["spoold-drain.service", "spoold-webui.service", "spoold.service"]
    assert (UNITS / "spoold-drain.timer").exists()


def test_systemd_analyze_verify_is_clean(root: Path):
    units = [*SERVICES, "spoold-drain.timer"]
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), \
        proc.stdout + proc.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_security_exposure_is_at_most_2_5(service: str):
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                           str(UNITS / service)], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert proc.returncode == 0 and match, proc.stdout + proc.stderr
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, proc.stdout
