"""Modes of the state Bouquet keeps on disk: files 0600, directories 0700.

The state directory holds what a resident's privacy depends on — the event log, Redis's
append-only file, the MLflow store (models hold a vector per resident), the erasure
register, the audit log — so nothing in it is readable by other accounts of the machine,
whatever the process's umask. Bouquet's own writers create their files and directories
through these helpers; processes Bouquet starts (Redis, the broker, MLflow) run with
:data:`PRIVATE_UMASK`, and so does every ``bouquet`` command.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
#: The umask under which every file a process creates is 0600 and every directory 0700.
PRIVATE_UMASK = 0o077


def private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents with mode 0700 (existing ones are left as
    they are: the operator may have chosen their modes); returns ``path``."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:  # another process made it meanwhile: keep theirs
            continue
        os.chmod(directory, PRIVATE_DIR)  # mkdir's mode is filtered by the umask
    return path


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """``os.open`` creating the file with mode 0600; returns the descriptor."""
    return os.open(path, flags, PRIVATE_FILE)


def create_private(path: Path) -> BinaryIO:
    """A new (or truncated) binary file opened for writing, mode 0600."""
    return os.fdopen(open_private(path), "wb")
