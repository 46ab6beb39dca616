"""The LightningDataModule over LitData shards (written by :mod:`vitlit.data.shards`), local or in object storage.

``python train.py data=streaming data.input_dir=<shards or s3://bucket/prefix>``. The images and batches are
the folder path's (:class:`vitlit.data.datamodule.ImageFolderDataModule`): the same transforms on uint8
tensors, uint8 batches the LightningModule normalises. LitData shards every epoch across ranks and loader
workers, shuffles it, and resumes it mid-epoch: the data module's ``state_dict`` (which Lightning keeps in the
checkpoint) holds the training loader's, handed back to the loader on ``ckpt_path=``. Lightning's own copy of
the loader state is not restored when the scheduler asks for ``estimated_stepping_batches`` (the loader is
built before the checkpoint is read), so the data module carries it.
Validation uses ``val/`` when present, else ``test/``; testing uses ``test/`` when present, else ``val/``.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from vitlit.data.image_datamodule import ImageDataModule, stage_sources
from vitlit.data.image_folder import load_rgb
from vitlit.data.shards import import_litdata, read_classes_file
from vitlit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from vitlit.private_api import at_last_batch_of_epoch

log = logging.getLogger(__name__)


class DecodeSample:
    """A shard sample ``{"image": bytes, "label": int, ...}`` -> (transform(uint8 image (3, H, W)), label).

    A class, not a closure, so that loader worker processes can unpickle it.
    """

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor], draft_size: int | None = None):
        self.transform = transform
        self.draft_size = draft_size

    def __call__(self, sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
        image = load_rgb(io.BytesIO(sample["image"]), self.draft_size)
        return self.transform(image), int(sample["label"])


@functools.cache
def resumable_loader_class() -> type:
    """LitData's ``StreamingDataLoader``, made to start the epoch after a resumed one afresh.

    A loader given ``load_state_dict`` keeps restoring that state until an iteration runs to its end; Lightning
    stops after the epoch's last batch without exhausting the iterator, so the next epoch would be empty.
    """

    class ResumableStreamingDataLoader(import_litdata().StreamingDataLoader):
        resumed = False

        def __iter__(self) -> Any:
            if self.restore and self.resumed:  # the restored epoch was iterated once already
                self.restore = False
            self.resumed = self.restore
            return super().__iter__()

    return ResumableStreamingDataLoader


class StreamingDataModule(ImageDataModule):
    """Train/validation/test loaders streaming the LitData shards at ``input_dir`` (a folder or ``s3://...``).

    Batches are (images uint8 (B, 3, S, S), labels int64 (B,)), as :class:`ImageFolderDataModule`'s; the
    transform arguments mean what they mean there (``conf/data/image_folder.yaml``). ``shuffle`` shuffles
    training (LitData: chunks, then samples within them, with ``shuffle_seed`` and the epoch).
    ``num_workers=None`` uses every CPU core; ``pin_memory=None`` pins when CUDA is available.
    ``cache_dir`` is where chunks of remote shards are kept (LitData's default when None), at most
    ``max_cache_size``; ``storage_options`` go to LitData's downloader (e.g. an S3 ``endpoint_url``).
    """

    def __init__(
        self,
        input_dir: str,
        batch_size: int = 32,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        shuffle: bool = True,
        shuffle_seed: int = 42,
        image_size: int = 224,
        train_augment: bool = True,
        train_crop_scale: Sequence[float] = (0.08, 1.0),
        horizontal_flip: float = 0.5,
        auto_augment: str | None = None,
        random_erasing: float = 0.0,
        eval_crop_fraction: float | Sequence[float] = 0.875,
        interpolation: str = "bilinear",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        fast_decode: bool = True,
        drop_last: bool = True,
        cache_dir: str | None = None,
        max_cache_size: str = "100GB",
        storage_options: dict | None = None,
    ):
        super().__init__()
        # Checkpoints keep these ("datamodule_hyper_parameters"): eval and predict rebuild the eval transform from them.
        self.save_hyperparameters()
        self.configure_batches(batch_size, num_workers, pin_memory)
        import_litdata()  # the clear install message now, not in a loader worker
        self.input_dir = str(input_dir).rstrip("/")
        self.shuffle, self.shuffle_seed, self.drop_last = shuffle, shuffle_seed, drop_last
        self.cache_dir, self.max_cache_size, self.storage_options = cache_dir, max_cache_size, storage_options or {}
        self._classes_file: dict | None = None
        self.datasets: dict[str, Any] = {}
        self._train_loader: Any = None
        self._train_loader_state: dict[str, Any] = {}

    @property
    def classes_file(self) -> dict:
        """``classes.json`` of the shard set: class names and images per split."""
        if self._classes_file is None:
            self._classes_file = read_classes_file(self.input_dir, self.cache_dir, self.storage_options)
        return self._classes_file

    @property
    def class_names(self) -> tuple[str, ...]:
        """The shard set's class names, in label order."""
        return tuple(self.classes_file["classes"])

    def prepare_data(self) -> None:
        self.classes_file  # noqa: B018 (reads, and for remote shards downloads, classes.json on one process)

    def stage_splits(self) -> dict[str, str]:
        """Which split each stage reads: {"train": "train", "val": "val"|"test", "test": "test"|"val"}."""
        return stage_sources(self.classes_file["splits"], f"the shard set {self.input_dir}")

    def _dataset(self, split: str, train: bool) -> Any:
        cache_dir = f"{self.cache_dir.rstrip('/')}/{split}" if self.cache_dir else None
        return import_litdata().StreamingDataset(
            input_dir=f"{self.input_dir}/{split}",
            cache_dir=cache_dir,
            shuffle=train and self.shuffle,
            seed=self.shuffle_seed,
            max_cache_size=self.max_cache_size,
            storage_options=self.storage_options,
            transform=DecodeSample(self.train_transform if train else self.eval_transform, self.draft_size),
        )

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        splits = self.stage_splits()
        for stage_name, split in splits.items():
            self.datasets[stage_name] = self._dataset(split, train=stage_name == "train")
        log.info("classes: %s", ", ".join(self.class_names))
        for stage_name, split in splits.items():
            count = self.classes_file["splits"][split]
            log.info("%-5s streams %s/%s (%d images)", stage_name, self.input_dir, split, count)

    def _loader(self, stage: str, drop_last: bool) -> Any:
        loader_class = resumable_loader_class() if stage == "train" else import_litdata().StreamingDataLoader
        return loader_class(
            self.datasets[stage],
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=drop_last,
        )

    def train_dataloader(self) -> Any:
        # Keep a partial batch when it is all there is (LitData's length is this process's part of the epoch).
        full_batch = len(self.datasets["train"]) >= self.batch_size
        self._train_loader = self._loader("train", drop_last=self.drop_last and full_batch)
        self._restore_train_loader()
        return self._train_loader

    def state_dict(self) -> dict[str, Any]:
        """Mid-epoch: the training loader's LitData state (what the epoch has yielded); between epochs: the epoch."""
        if self._train_loader is None or self.trainer is None:
            return {}
        if at_last_batch_of_epoch(self.trainer):  # the next epoch starts afresh
            return {"epoch": self._train_loader.current_epoch}
        return {"train_loader": self._train_loader.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._train_loader_state = dict(state_dict)
        if self._train_loader is not None:  # Lightning may build the loader before it reads the checkpoint
            self._restore_train_loader()

    def _restore_train_loader(self) -> None:
        state, self._train_loader_state = self._train_loader_state, {}
        if "train_loader" in state:
            self._train_loader.load_state_dict(state["train_loader"])
            log.info("resuming the epoch's stream after %d samples", state["train_loader"]["num_samples_yielded"])
        elif "epoch" in state:  # the next epoch shuffles as it would have without the restart
            self._train_loader.current_epoch = state["epoch"]

