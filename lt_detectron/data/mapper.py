"""Image reading with errors that name the file, the dataset's image id and the fix
(re-exported by :mod:`lt_detectron.data.validation`).
"""

import os

from detectron2.data import DatasetMapper

__all__ = ["ImageReadError", "LTDatasetMapper"]


class ImageReadError(OSError):
    """An image of a dataset cannot be read (names the file, the image id and the fix)."""


class LTDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` whose image-read failures name the file, the image id and the fix.

    Use it wherever a ``DatasetMapper`` is built: ``build_detection_train_loader(cfg,
    mapper=LTDatasetMapper(cfg, True))``, ``build_detection_test_loader(cfg, name,
    mapper=LTDatasetMapper(cfg, False))``.
    """

    def __call__(self, dataset_dict):
        from PIL import UnidentifiedImageError

        try:
            return super().__call__(dataset_dict)
        except (OSError, UnidentifiedImageError, SyntaxError) as e:
            file_name = dataset_dict.get("file_name")
            if isinstance(e, ImageReadError):
                raise
            missing = file_name is not None and not os.path.isfile(file_name)
            raise ImageReadError(
                "cannot read image %s (image id %s): %s. %s"
                % (
                    os.path.abspath(file_name) if file_name else "<no file_name>",
                    dataset_dict.get("image_id"),
                    "the file does not exist" if missing else "%s: %s" % (type(e).__name__, e),
                    "Check the image_root given at registration ($DETECTRON2_DATASETS for the builtin "
                    "datasets, see datasets/README.md)"
                    if missing
                    else "The file is corrupt or truncated: re-download it, or remove the image from the json",
                )
            ) from e
