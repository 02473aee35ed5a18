"""
Files that are either the old or the new version, never a torn one: temp file, fsync, rename.

Checkpoints, replay buffers and policy exports are written this way, so a crash or a kill in
the middle of a save leaves the previous file in place (and at most a ``.<name>.<random>.tmp``
that ``checkpoint.remove_stale_temp_files`` clears).
"""

from __future__ import annotations

import os
from pathlib import Path
import tempfile


class StagedFile:
    """
    A file written to a temp name in its directory and fsynced, put in place by ``commit``.

    Several staged files committed one after another keep a set of files consistent except in
    the instant between two renames (checkpoint + replay buffer).
    """

    def __init__(self, path: str | os.PathLike, write) -> None:
        self.path = Path(path)
        fd, name = tempfile.mkstemp(prefix=f'.{self.path.name}.', suffix='.tmp',
                                    dir=self.path.parent)
        self.tmp = Path(name)
        try:
            with os.fdopen(fd, 'wb') as stream:
                write(stream)
                stream.flush()
                os.fsync(stream.fileno())
        except BaseException:
            self.discard()
            raise

    def commit(self) -> None:
        """Rename into place and fsync the directory, so the rename survives a crash."""
        os.replace(self.tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def discard(self) -> None:
        """Remove the temp file (after a failure)."""
        self.tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Write via a temp file in the same directory, fsync, os.replace, fsync the directory."""
    StagedFile(path, write).commit()
