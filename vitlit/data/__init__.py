"""Image folders, their pipeline and the LightningDataModules (imports nothing of models/, training/).

``vitlit.data.ImageFolderDataModule`` loads Lightning on first use, so the image pipeline
(:mod:`vitlit.data.transforms`, :mod:`vitlit.data.image_folder`) stays free of it for inference.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ImageFolderDataModule"]


def __getattr__(name: str) -> Any:
    if name == "ImageFolderDataModule":
        from vitlit.data.datamodule import ImageFolderDataModule

        return ImageFolderDataModule
    raise AttributeError(f"module 'vitlit.data' has no attribute {name!r}")
