"""The progress log: each notebook's result on disk as soon as it is graded, so that a grader killed mid-batch
loses nothing, and ``grade --resume`` grades only what is left.

The log is JSON Lines, one line per finished notebook, appended and flushed to disk before the next result::

    {"key": {"path": "/abs/alice/01_nerf.ipynb", "sha256": "…", "masters": "…"}, "graded_at": "2025-…",
     "result": {…SubmissionResult.as_record()…}}

A result is reused only for the same key: the same file (absolute path) with the same bytes, graded against the
same masters — a student who resubmits, or an instructor who fixes a master, gets a fresh grade. A result the
grader failed to produce (no kernel) is never reused. A line cut short by the kill is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from text3d_edu.grading.grader import SubmissionResult


def masters_fingerprint(solutions: Path) -> str:
    """sha256 over the master notebooks' names and bytes: which answer key a result was graded against."""
    digest = hashlib.sha256()
    for path in sorted(Path(solutions).glob("*.ipynb")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def submission_key(path: str | Path, masters: str) -> dict | None:
    """What a result is reused for; None for a file that cannot be read (it is graded, i.e. reported, again)."""
    try:
        sha256 = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None
    return {"path": os.path.abspath(path), "sha256": sha256, "masters": masters}


class ProgressLog:
    """The JSON-lines file of one batch: ``done`` holds the results it can reuse, ``append`` adds one."""

    def __init__(self, path: str | Path, masters: str, resume: bool):
        """Without ``resume`` the file starts empty (an old batch's lines must not mix in); with it, the lines
        already there are read and kept."""
        self.path, self.masters = Path(path), masters
        self.done: dict[str, SubmissionResult] = {}  # json.dumps(key, sort_keys=True) -> result
        self.unreadable_lines = 0
        if resume and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    result = SubmissionResult.from_record(record["result"])
                except (ValueError, KeyError, TypeError):  # the line the kill cut short
                    self.unreadable_lines += 1
                    continue
                if not result.grader_failed:
                    self.done[_key_text(record["key"])] = result
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a" if resume else "w", encoding="utf-8")  # noqa: SIM115 (closed in close)

    def reusable(self, path: str | Path) -> SubmissionResult | None:
        """The result already logged for this very file against these masters, renamed to ``path`` as given."""
        key = submission_key(path, self.masters)
        result = self.done.get(_key_text(key)) if key else None
        if result is not None:
            result.notebook = str(path)
        return result

    def append(self, result: SubmissionResult) -> None:
        """One line, on disk (flushed and fsynced) before this returns."""
        record = {"key": submission_key(result.notebook, self.masters),
                  "graded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "result": result.as_record()}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _key_text(key: dict | None) -> str:
    return json.dumps(key, sort_keys=True)
