#!/usr/bin/env python3
"""Print pyproject.toml's requirements, one a line: `pyproject_deps.py PYPROJECT [EXTRA...]`.

The images install these in a layer of their own, before the source is copied, so editing
the code does not reinstall the dependencies (the package itself goes in with --no-deps).
"""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"pyproject_deps: no extra {extra!r} in {pyproject}")
        reqs += optional[extra]
    return reqs


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print("\n".join(requirements(sys.argv[1], sys.argv[2:])))
