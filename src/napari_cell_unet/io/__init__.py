"""Reading and writing images, label masks, COCO files and dataset folders (no torch, no Qt)."""

from .coco import CocoDataset, read_coco
from .dataset import DatasetPair, find_dataset_pairs, is_dataset_folder
from .errors import CellUnetFileError, CocoFormatError, DatasetFolderError, ImageFileError
from .images import ImageData, image_shape, is_labels_path, open_image, read_image, read_labels
from .labels_writer import labels_to_coco, smallest_label_dtype, write_labels_coco, write_labels_tiff

__all__ = [
    "CellUnetFileError", "CocoDataset", "CocoFormatError", "DatasetFolderError", "DatasetPair", "ImageData",
    "ImageFileError", "find_dataset_pairs", "image_shape", "is_dataset_folder", "is_labels_path", "labels_to_coco",
    "open_image", "read_coco", "read_image", "read_labels", "smallest_label_dtype", "write_labels_coco",
    "write_labels_tiff",
]
