"""The transforms, defined in one place: the reference's training augmentation and the ImageNet evaluation view."""

from __future__ import annotations

from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(image_size: int, min_scale: float) -> transforms.Compose:
    """Reference augmentation: random resized crop, horizontal flip, light colour jitter, ImageNet normalisation."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size, scale=(min_scale, 1.0), antialias=True),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_transform(image_size: int) -> transforms.Compose:
    """Resize to image_size / 0.875 then centre-crop: the standard ImageNet evaluation view."""
    return transforms.Compose(
        [
            transforms.Resize(round(image_size / 0.875), antialias=True),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def pixel_part(transform: transforms.Compose) -> transforms.Compose:
    """The steps of a transform before ToTensor: what it does to the PIL image (views.py stores their uint8 result)."""
    steps = transform.transforms
    return transforms.Compose(steps[: next(i for i, step in enumerate(steps) if isinstance(step, transforms.ToTensor))])
