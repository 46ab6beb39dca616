"""Files that appear whole or not at all: written under a temporary name beside their place, synced, then renamed.

A full disk, a crash or a kill while writing leaves the file that was there before (or none) and no partial file
under the real name. ``metrics.json``, ``predictions.json`` and exported weights go through :func:`written_atomically`;
checkpoints through :class:`vitlit.training.faults.AtomicCheckpointIO`, the same idea inside Lightning.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _sync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def written_atomically(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yields a path of the same name inside a hidden temporary folder beside ``path``; write the file there.

    When the block ends, every file written in that folder moves beside ``path`` (``path`` itself last: an ONNX
    graph's external weights come first), then the folder goes. When the block raises, the folder and all in it go.
    With ``overwrite=False`` an existing ``path`` raises ``FileExistsError`` and is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial"))
    try:
        try:
            yield folder / path.name
        except OSError as error:
            if error.filename is None:  # a failed write names no file: name the one it was for
                error.filename = str(path)
            raise
        written = sorted(folder.iterdir(), key=lambda file: file.name == path.name)
        for file in written:
            _sync(file)
        if not overwrite and path.exists():
            raise FileExistsError(f"{path} already exists; choose a new file name (vitlit never overwrites one)")
        for file in written:
            os.replace(file, path.parent / file.name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`written_atomically`; returns ``path``."""
    with written_atomically(path) as temporary:
        temporary.write_text(text)
    return Path(path)
