"""Data: dataset loaders (IDX, CIFAR-10 python, image folders, the embedded MNIST subset), the
seeded validation split, the paper's batched augmentations, a shardable tensor loader, and a
loader whose data and augmentation stay on the training device.

Images come out float (N, C, H, W) in [0, 1]; labels int64 (N,).
"""

from .augment import Augmentation, center_crop, random_crop, random_hflip, resize
from .cifar import CIFAR10_CLASSES, load_cifar10_python, read_cifar_batch
from .datasets import DATASETS, ImageData, evaluation_subset, load_dataset, split_train_val, to_float
from .device_loader import DeviceLoader
from .download import download_dataset
from .embedded import load_embedded_mnist
from .idx import read_idx
from .image_folder import load_image_folder
from .loader import TensorLoader
from .paths import cache_dir, data_root

__all__ = [
    "Augmentation", "CIFAR10_CLASSES", "DATASETS", "DeviceLoader", "ImageData", "TensorLoader", "cache_dir",
    "center_crop",
    "data_root", "download_dataset", "evaluation_subset", "load_cifar10_python", "load_dataset", "load_embedded_mnist",
    "load_image_folder", "random_crop", "random_hflip", "read_cifar_batch", "read_idx", "resize",
    "split_train_val", "to_float",
]
