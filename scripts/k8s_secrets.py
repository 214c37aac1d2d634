"""Create the git-ignored `secrets.env` of every manifest folder from its committed `secrets.env.example`.

    make k8s-secrets          (or: python3 scripts/k8s_secrets.py [repository root])

Every empty value gets a random URL-safe one; a name used in several folders (a database password that
both the database and its client need) gets the same value everywhere. Values already in a secrets.env
are kept, so running it again never rotates a password a running database holds. Files are written with
mode 600. Kustomize's secretGenerator turns each file into a Secret; nothing secret is ever committed.
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


def main(root: Path) -> int:
    examples = sorted(p for p in root.glob("*/secrets.env.example") if ".venv" not in p.parts)
    if not examples:
        print(f"no */secrets.env.example under {root}", file=sys.stderr)
        return 1
    existing = {p: _read(p.with_name("secrets.env")) for p in examples if p.with_name("secrets.env").exists()}
    shared: dict[str, str] = {}
    for values in existing.values():
        for key, value in values.items():
            if value:
                shared.setdefault(key, value)
    for example in examples:
        target = example.with_name("secrets.env")
        kept = existing.get(example, {})
        lines = []
        for key, default in _read(example).items():
            value = kept.get(key) or default or shared.get(key) or secrets.token_urlsafe(24)
            shared.setdefault(key, value)
            lines.append(f"{key}={value}\n")
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(lines)
        print(f"{target.relative_to(root)}: {len(lines)} value(s){' (kept existing)' if kept else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]))
