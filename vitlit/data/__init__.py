"""Image folders and the LightningDataModule with its 224x224 uint8 pipeline (imports nothing of models/, training/)."""

from vitlit.data.datamodule import ImageFolderDataModule

__all__ = ["ImageFolderDataModule"]
