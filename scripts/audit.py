"""`make audit`: pip-audit over the virtual environment that `make install` built from the pins in
pyproject.toml (the pinned packages and everything they pull in).

Exit status: 0 clean; 1 a known vulnerability, or a package the advisory service does not know
(`--strict`: an unaudited package is not a clean one); 2 the audit could not run because the
advisory service could not be reached, or it knew none of the packages. Accepted exceptions are
listed in ACCEPTED with the reason, and in docs/operations.md under "Audit".
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PIP_AUDIT = Path(sys.executable).parent / "pip-audit"

# Vulnerability id → why it is accepted for now. Keep the "Audit" section of docs/operations.md in step.
ACCEPTED: dict[str, str] = {}

NETWORK_ERRORS = ("ConnectionError", "NameResolutionError", "Max retries exceeded", "ConnectTimeout",
                  "ReadTimeout", "SSLError")


def main() -> int:
    command = [str(PIP_AUDIT), "--skip-editable", "--progress-spinner", "off", "--format", "json",
               *[argument for vuln in ACCEPTED for argument in ("--ignore-vuln", vuln)]]
    result = subprocess.run(command, capture_output=True, text=True)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        report = None
    if report is None:
        if any(error in result.stderr for error in NETWORK_ERRORS):
            print("make audit: the vulnerability service could not be reached from this machine; "
                  "nothing was audited. Run `make audit` where it can be reached.", file=sys.stderr)
            return 2
        print(result.stderr.strip() or "make audit: pip-audit gave no report", file=sys.stderr)
        return 2

    dependencies = report["dependencies"]
    skipped = [d for d in dependencies if d.get("skip_reason")]
    audited = [d for d in dependencies if not d.get("skip_reason")]
    if dependencies and not audited:
        print(f"make audit: the vulnerability service knew none of the {len(dependencies)} installed packages "
              f"(first: {skipped[0]['skip_reason']}).\nmake audit: nothing could be audited here — the index this "
              "machine reaches does not serve vulnerability data. Run `make audit` where the public index "
              "can be reached.", file=sys.stderr)
        return 2

    vulnerable = [(d, v) for d in audited for v in d.get("vulns", [])]
    for dependency, vuln in vulnerable:
        fixed = ", ".join(vuln.get("fix_versions") or []) or "no fixed version yet"
        print(f"{dependency['name']} {dependency['version']}: {vuln['id']} (fixed in: {fixed})")
    for dependency in skipped:
        print(f"not audited: {dependency['skip_reason']}")
    for vuln, reason in ACCEPTED.items():
        print(f"accepted: {vuln}: {reason}")
    print(f"make audit: {len(audited)} packages audited, {len(vulnerable)} known vulnerabilities, "
          f"{len(skipped)} not audited, {len(ACCEPTED)} accepted exceptions")
    return 1 if vulnerable or skipped else 0


if __name__ == "__main__":
    sys.exit(main())
