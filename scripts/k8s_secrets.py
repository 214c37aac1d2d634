"""Create the git-ignored `secrets.env` of every manifest folder from its committed `secrets.env.example`.

    make k8s-secrets                          (or: python3 scripts/k8s_secrets.py [repository root])
    make k8s-secrets ROTATE="NAME [NAME...]"  (or: python3 scripts/k8s_secrets.py [root] --rotate NAME ...)

Every empty value gets a random URL-safe one; a name used in several folders (a database password that
both the database and its client need) gets the same value everywhere. Values already in a secrets.env
are kept, so running it again never rotates a password a running database holds; ``--rotate NAME`` gives
NAME one new random value in every file that holds it (a password a database holds must be changed in the
database too: README, "Security"). Files are written with mode 600. Kustomize's secretGenerator turns each file into a Secret; nothing secret is ever committed.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path


def _read(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pairs[key.strip()] = value.strip()
    return pairs


def main(root: Path, rotate: frozenset[str] = frozenset()) -> int:
    """Write every */secrets.env; ``rotate``: names that get a new value. 1 when there is nothing to do or a
    name to rotate is in no example."""
    examples = sorted(p for p in root.glob("*/secrets.env.example") if ".venv" not in p.parts)
    if not examples:
        print(f"no */secrets.env.example under {root}", file=sys.stderr)
        return 1
    generated = {key for example in examples for key, default in _read(example).items() if not default}
    fixed = {key for example in examples for key, default in _read(example).items() if default}
    problems = [
        f"{key}: its value is fixed in the example (not a secret)" for key in sorted(rotate & fixed - generated)
    ]
    problems += [f"{key}: no secrets.env.example holds it" for key in sorted(rotate - fixed - generated)]
    if problems:
        print(f"cannot rotate {'; '.join(problems)}", file=sys.stderr)
        return 1
    existing = {p: _read(p.with_name("secrets.env")) for p in examples if p.with_name("secrets.env").exists()}
    shared = {key: secrets.token_urlsafe(24) for key in rotate}
    for values in existing.values():
        for key, value in values.items():
            if value:
                shared.setdefault(key, value)
    for example in examples:
        _write(example, root, existing.get(example, {}), shared, rotate)
    return 0


def _write(example: Path, root: Path, kept: dict[str, str], shared: dict[str, str], rotate: frozenset[str]) -> None:
    target = example.with_name("secrets.env")
    lines = []
    for key, default in _read(example).items():
        value = (None if key in rotate else kept.get(key)) or default or shared.get(key) or secrets.token_urlsafe(24)
        shared.setdefault(key, value)
        lines.append(f"{key}={value}\n")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: make it 600 too
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.writelines(lines)
    rotated = sorted(rotate & set(_read(example)))
    note = f" (rotated {', '.join(rotated)})" if rotated else " (kept existing)" if kept else ""
    print(f"{target.relative_to(root)}: {len(lines)} value(s){note}")


def _arguments(argv: list[str]) -> tuple[Path, frozenset[str]]:
    rotate = frozenset(argv[argv.index("--rotate") + 1 :]) if "--rotate" in argv else frozenset()
    positional = argv[: argv.index("--rotate")] if "--rotate" in argv else argv
    return (Path(positional[0]) if positional else Path(__file__).resolve().parents[1]), rotate


if __name__ == "__main__":
    sys.exit(main(*_arguments(sys.argv[1:])))
