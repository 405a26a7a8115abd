"""Images and data: one image reader and writer (`images`), folders and pairs (`folders`), the
training data and its sampler (`training`, `samples`), and albumentations augmentation (`transforms`).
"""
from img2img.data.folders import list_images, match_pairs
from img2img.data.images import (IMAGE_EXTENSIONS, ImageReadError, image_bit_depth, probe_image, read_image,
                                 read_pair_image, save_image, to_image_array, to_tensor)
from img2img.data.training import TrainData

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "TrainData",
    "image_bit_depth",
    "list_images",
    "match_pairs",
    "probe_image",
    "read_image",
    "read_pair_image",
    "save_image",
    "to_image_array",
    "to_tensor",
]
