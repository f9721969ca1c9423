"""Training and evaluation images: the photos registry packages ship, a folder, or scikit-learn's digits.

The evaluation photos (scikit-learn's `china.jpg` and `flower.jpg`) never enter training: `training_images`
refuses them by name, so a PSNR reported on them is measured on photos the model never saw. All randomness goes
through one `torch.Generator`, so a seed fixes the whole data stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model.pixels import from_uint8

HELD_OUT = ("china.jpg", "flower.jpg")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MIN_SIDE = 96  # smaller files in skimage.data are icons and test patterns, not photos
DIGITS_SIZE = 28
DIGITS_EVAL = 300  # the last digits of scikit-learn's set are held out for evaluation


@dataclass(frozen=True)
class NamedImage:
    name: str
    pixels: torch.Tensor  # (C, H, W) float32 in [-1, 1]


def to_tensor(image: Image.Image, channels: int) -> torch.Tensor:
    """PIL image -> (C, H, W) float32 in [-1, 1], converted to RGB or L.

    The 8-bit pixels go through `model.pixels.from_uint8`, the conversion the service applies to the images it is
    sent, so training sees bit for bit the inputs the served model gets."""
    mode = "RGB" if channels == 3 else "L"
    if image.mode in ("RGBA", "LA", "P"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    pixels = torch.from_numpy(np.array(image.convert(mode), dtype=np.uint8))  # (H, W) or (H, W, C), a writable copy
    pixels = pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1).contiguous()  # -> (C, H, W)
    return from_uint8(pixels)


def _load_files(paths: list[Path], channels: int) -> list[NamedImage]:
    images = []
    for path in sorted(paths):
        if path.name in HELD_OUT:
            raise ValueError(f"{path} is an evaluation photo and must not be trained on")
        try:
            with Image.open(path) as img:
                img.load()
                pixels = to_tensor(img, channels)
        except OSError:
            continue  # not an image PIL can read (multi-page oddities): skip
        if min(pixels.shape[1:]) >= MIN_SIDE:
            images.append(NamedImage(path.name, pixels))
    return images


def shipped_photos(channels: int) -> list[NamedImage]:
    """Every photo in scikit-image's data folder, plus scikit-learn's sample images minus the held-out ones."""
    import skimage.data
    import sklearn.datasets

    skimage_dir = Path(skimage.data.__file__).parent
    paths = [p for p in skimage_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and "tiny" not in p.name]
    sklearn_dir = Path(sklearn.datasets.__file__).parent / "images"
    paths += [p for p in sklearn_dir.glob("*.jpg") if p.name not in HELD_OUT]
    return _load_files(paths, channels)


def folder_images(folder: str | Path, channels: int) -> list[NamedImage]:
    paths = [p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
    images = _load_files(paths, channels)
    if not images:
        raise ValueError(f"no images of at least {MIN_SIDE}px found under {folder}")
    return images


def source_images(spec: str, channels: int) -> list[NamedImage]:
    """Images from a comma-separated list of sources: `photos` (the shipped photos) and/or folders."""
    images: list[NamedImage] = []
    for source in (part.strip() for part in spec.split(",")):
        images += shipped_photos(channels) if source == "photos" else folder_images(source, channels)
    return images


def eval_photos(channels: int, crop: int) -> tuple[list[str], torch.Tensor]:
    """The held-out photos cut into `crop`-sized tiles at a 2x3 grid of positions -> (names, (N, C, crop, crop))."""
    import sklearn.datasets

    sklearn_dir = Path(sklearn.datasets.__file__).parent / "images"
    names, tiles = [], []
    for name in HELD_OUT:
        with Image.open(sklearn_dir / name) as img:
            pixels = to_tensor(img, channels)
        _, h, w = pixels.shape
        for y in np.linspace(0, h - crop, 2).round().astype(int):
            for x in np.linspace(0, w - crop, 3).round().astype(int):
                names.append(name)
                tiles.append(pixels[:, y : y + crop, x : x + crop])
    return names, torch.stack(tiles)


def digits(channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8x8 digits upsampled to 28x28 -> (train (N, 1, 28, 28), eval (300, 1, 28, 28))."""
    import sklearn.datasets

    raw = sklearn.datasets.load_digits().images.astype(np.float32) / 16.0  # (N, 8, 8) in [0, 1]
    small = torch.from_numpy(raw)[:, None]  # (N, 1, 8, 8)
    big = F.interpolate(small, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bicubic", align_corners=False)
    big = big.clamp(0.0, 1.0) * 2.0 - 1.0
    if channels == 3:
        big = big.expand(-1, 3, -1, -1).contiguous()
    return big[:-DIGITS_EVAL], big[-DIGITS_EVAL:]


def digit_labels() -> tuple[torch.Tensor, torch.Tensor]:
    """The classes (0-9) of `digits()`'s images, split the same way -> (train (N,), eval (300,)) int64."""
    import sklearn.datasets

    target = torch.from_numpy(sklearn.datasets.load_digits().target.astype(np.int64))
    return target[:-DIGITS_EVAL], target[-DIGITS_EVAL:]


def is_gray(pixels: torch.Tensor) -> bool:
    """True for a (C, H, W) image whose channels are all equal (a grayscale photo converted to RGB)."""
    return bool(pixels.shape[0] == 1 or (pixels[1:] == pixels[:1]).all())


class CropSampler:
    """Random crops at several scales with horizontal flips, drawn from a list of images.

    A crop covers `crop * s` pixels of its source for a log-uniform scale s in [1, max_scale] and is resized
    (antialiased) to `crop`: the model sees both fine texture and downscaled whole-scene structure.
    """

    def __init__(
        self,
        images: list[NamedImage],
        crop: int,
        generator: torch.Generator,
        max_scale: float = 3.0,
        gray_weight: float = 1.0,
        permute_channels: float = 0.0,
    ):
        usable = [im for im in images if min(im.pixels.shape[1:]) >= crop]
        if not usable:
            raise ValueError(f"no training image is at least {crop}px on its shorter side")
        self.images = usable
        self.crop = crop
        self.generator = generator
        self.max_scale = max_scale
        self.permute_channels = permute_channels
        # larger images are sampled more often (square root of their area); grayscale photos converted to RGB
        # are down-weighted by `gray_weight`, else an RGB model learns that most pixels have no colour
        areas = torch.tensor([float(im.pixels.shape[1] * im.pixels.shape[2]) for im in usable])
        gray = torch.tensor([float(is_gray(im.pixels)) for im in usable])
        weights = areas.sqrt() * (1 - gray + gray * gray_weight)
        self.weights = weights / weights.sum()

    def _randint(self, high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=self.generator).item())

    def sample_one(self) -> torch.Tensor:
        index = int(torch.multinomial(self.weights, 1, generator=self.generator).item())
        pixels = self.images[index].pixels
        _, h, w = pixels.shape
        top_scale = min(self.max_scale, min(h, w) / self.crop)
        u = float(torch.rand((), generator=self.generator))
        size = int(round(self.crop * math.exp(u * math.log(top_scale))))
        size = max(self.crop, min(size, h, w))
        y, x = self._randint(h - size + 1), self._randint(w - size + 1)
        tile = pixels[:, y : y + size, x : x + size]
        if size != self.crop:
            tile = F.interpolate(tile[None], size=(self.crop, self.crop), mode="bilinear", antialias=True)[0]
        if float(torch.rand((), generator=self.generator)) < 0.5:
            tile = tile.flip(-1)
        # no draw when off, so a run without this augmentation sees the same crops as before it existed
        if self.permute_channels > 0 and tile.shape[0] == 3:
            if float(torch.rand((), generator=self.generator)) < self.permute_channels:
                tile = tile[torch.randperm(3, generator=self.generator)]  # new colour combinations, same structure
        return tile.clamp(-1.0, 1.0)

    def batch(self, size: int) -> torch.Tensor:
        return torch.stack([self.sample_one() for _ in range(size)])


class TensorSampler:
    """Random minibatches (with horizontal flips off: digits are not mirror-symmetric) from a fixed tensor."""

    def __init__(self, data: torch.Tensor, generator: torch.Generator) -> None:
        self.data = data
        self.generator = generator
        self._order = torch.empty(0, dtype=torch.long)

    def batch(self, size: int) -> torch.Tensor:
        # epochs: a fresh permutation whenever the current one is used up
        if self._order.numel() < size:
            self._order = torch.cat([self._order, torch.randperm(len(self.data), generator=self.generator)])
        index, self._order = self._order[:size], self._order[size:]
        return self.data[index]
