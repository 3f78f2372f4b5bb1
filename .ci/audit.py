"""Audit spoold's installed dependency set for known vulnerabilities (pip-audit).

NAME
    .ci/audit.py - pip-audit on exactly what ``pip install '.[test]'`` installed

DESCRIPTION
    Walks the installed distributions that spoold[test] requires, transitively
    (importlib.metadata), pins each at its installed version, and runs
    ``pip-audit --no-deps --disable-pip -r PINS`` on them, so that the
    machine's unrelated packages are not audited and nothing is resolved
    again.

DIAGNOSTICS
    Exit 1 when pip-audit reports a known vulnerability (each one printed),
    0 otherwise.  pip-audit needs PyPI's advisory data over the network; when
    it cannot get it, every dependency comes back "could not be audited": the
    script then prints AUDIT INCOMPLETE with the reason and exits 0, so that a
    machine without that service still runs the tests, and the log says
    plainly that no audit took place.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement


def installed_closure(root: str) -> dict[str, str]:
    """name -> installed version for every distribution ``root`` needs, itself excluded."""
    pins: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(root)]
    while todo:
        requirement = todo.pop()
        key = (requirement.name.lower(), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency for another platform
        pins[dist.metadata["Name"].lower()] = dist.version
        for text in dist.requires or []:
            needed = Requirement(text)
            extras = requirement.extras or {""}
            if needed.marker and not any(needed.marker.evaluate({"extra": e}) for e in extras):
                continue
            todo.append(needed)
    pins.pop(Requirement(root).name.lower(), None)
    return pins


def main() -> int:
    pins = installed_closure("spoold[test]")
    with tempfile.TemporaryDirectory() as work:
        requirements = Path(work) / "pins.txt"
        requirements.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
        report = Path(work) / "report.json"
        proc = subprocess.run([sys.executable, "-m", "pip_audit", "--no-deps", "--disable-pip",
                               "--progress-spinner", "off", "-r", str(requirements),
                               "-f", "json", "-o", str(report)], capture_output=True, text=True)
        if not report.exists():
            print(f"AUDIT INCOMPLETE: pip-audit failed ({proc.returncode}): "
                  f"{proc.stderr.strip().splitlines()[-1:]}")
            return 0
        dependencies = json.loads(report.read_text())["dependencies"]
    vulnerable = [d for d in dependencies if d.get("vulns")]
    skipped = [d for d in dependencies if d.get("skip_reason")]
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            print(f"VULNERABLE: {dep['name']} {dep['version']}: {vuln['id']} "
                  f"(fixed in {', '.join(vuln.get('fix_versions') or ['no release yet'])})")
    if skipped:
        print(f"AUDIT INCOMPLETE: {len(skipped)} of {len(dependencies)} dependencies could not "
              f"be audited (no advisory data from PyPI here), e.g. {skipped[0]['skip_reason']}")
    audited = len(dependencies) - len(skipped)
    print(f"pip-audit: {audited} of {len(dependencies)} dependencies audited, "
          f"{len(vulnerable)} with known vulnerabilities")
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main())
