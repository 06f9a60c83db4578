"""The 15 MNIST-C corruptions (Mu & Gilmer 2019), written from their published definitions.

Each corruption maps float images in [0, 1], shape (N, 28, 28), to float images
of the same shape, at the single severity MNIST-C ships, drawing every image's
randomness from one ``numpy`` Generator. :func:`corrupt` wraps them for the
uint8 (N, 1, 28, 28) arrays of :class:`~agilenn.data.dataset.ImageDataset` and
rounds the result back to uint8. Batches are vectorised; no loop runs per image.

Where the reference code's behaviour differs from its prose we follow the code,
because that is what produced the MNIST-C images: ``glass_blur`` blurs along
rows only (scikit-image's ``gaussian(..., multichannel=True)`` on a 2-D image
treats the columns as channels), and ``zigzag`` keeps its odd last segment.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from functools import cache

import numpy as np
from scipy import ndimage

__all__ = ["CORRUPTIONS", "corrupt", "lookup", "split_seed"]

Corruption = Callable[[np.ndarray, np.random.Generator], np.ndarray]

SIZE = 28
CENTRE = (SIZE - 1) / 2.0  # the affine corruptions keep pixel (13.5, 13.5) fixed
CHUNK = 8192  # images per vectorised step: bounds the float64 temporaries to a few hundred MB
LINE_WIDTH = 2.3  # a drawn line fades to zero this many pixels (vertically) from its centre


# --------------------------------------------------------------------------- affine


def _centred(linear: np.ndarray) -> np.ndarray:
    """A 2x3 (x, y) map with this linear part that keeps the image centre fixed."""
    shift = CENTRE * (1.0 - linear.sum(axis=1))
    return np.column_stack([linear, shift])


def _warp(images: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Bilinear resampling: output pixel (x=col, y=row) reads input at ``matrix @ (x, y, 1)``.

    Samples outside the image read 0, as scikit-image's ``warp`` with its
    default constant mode does.
    """
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    x = matrix[0, 0] * cols + matrix[0, 1] * rows + matrix[0, 2]
    y = matrix[1, 0] * cols + matrix[1, 1] * rows + matrix[1, 2]
    flat = images.reshape(len(images), SIZE * SIZE)
    padded = np.concatenate([flat, np.zeros((len(images), 1))], axis=1)  # last column reads 0
    out = np.zeros_like(flat)
    for dy in (0, 1):
        for dx in (0, 1):
            yi, xi = np.floor(y) + dy, np.floor(x) + dx
            weight = (1.0 - np.abs(x - xi)) * (1.0 - np.abs(y - yi))
            inside = (yi >= 0) & (yi < SIZE) & (xi >= 0) & (xi < SIZE)
            index = np.where(inside, yi * SIZE + xi, SIZE * SIZE).astype(np.intp)
            out += padded[:, index.ravel()] * weight.ravel()
    return out.reshape(images.shape)


def _warp_by_group(images: np.ndarray, groups: np.ndarray, matrices: dict[int, np.ndarray]) -> np.ndarray:
    """Warp each image with the matrix of its group (the random part is only a sign)."""
    out = np.empty_like(images)
    for group, matrix in matrices.items():
        chosen = groups == group
        out[chosen] = _warp(images[chosen], matrix)
    return out


def _signs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.choice(np.array([-1, 1]), size=shape)


def rotate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate by 0.4 rad (about 23 degrees) about the centre, clockwise or not at random."""
    def rotation(angle: float) -> np.ndarray:
        return _centred(np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]))

    signs = _signs(rng, (len(x),))
    return _warp_by_group(x, signs, {s: rotation(0.4 * s) for s in (-1, 1)})


def shear(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shear by an angle of 0.4 rad about the centre, in a random direction."""
    def shearing(angle: float) -> np.ndarray:
        return _centred(np.array([[1.0, -math.sin(angle)], [0.0, math.cos(angle)]]))

    signs = _signs(rng, (len(x),))
    return _warp_by_group(x, signs, {s: shearing(0.4 * s) for s in (-1, 1)})


def scale(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shrink to 70% about the centre (the sampling grid is stretched by 1/0.7)."""
    return _warp(x, _centred(np.eye(2) / 0.7))


def translate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift by 3 pixels along each axis, each direction drawn at random."""
    signs = _signs(rng, (len(x), 2))
    groups = (signs[:, 0] > 0) * 2 + (signs[:, 1] > 0)
    matrices = {
        g: np.array([[1.0, 0.0, 3.0 * (1 if g >= 2 else -1)], [0.0, 1.0, 3.0 * (1 if g % 2 else -1)]])
        for g in range(4)
    }
    return _warp_by_group(x, groups, matrices)


# --------------------------------------------------------------------------- noise and blur


def shot_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson noise: ``Poisson(3 x) / 3``, so the image keeps only 4 grey levels."""
    return rng.poisson(x * 3.0) / 3.0


def impulse_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper: each pixel becomes 0 or 1 (even odds) with probability 0.17."""
    flipped = rng.random(x.shape) < 0.17
    salted = rng.random(x.shape) < 0.5
    return np.where(flipped, salted.astype(np.float64), x)


def _blur_rows(x: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter1d(x, sigma, axis=1, mode="nearest", truncate=4.0)


def glass_blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur (sigma 0.7, along rows), swap pixels with a neighbour (delta 1, 2 passes), blur again.

    The swaps run in the reference's order, bottom-right to top-left, one image
    position at a time across the whole batch; each swap happens with
    probability 1/2 and its offsets are drawn from {-1, 0}.
    """
    sigma, delta, passes = 0.7, 1, 2
    pixels = (_blur_rows(x, sigma) * 255.0).astype(np.uint8)  # truncates, as the reference does
    every = np.arange(len(x))
    for _ in range(passes):
        for h in range(SIZE - delta, delta, -1):
            for w in range(SIZE - delta, delta, -1):
                swap = rng.random(len(x)) < 0.5
                dy, dx = rng.integers(-delta, delta, size=(2, len(x)))
                n, h2, w2 = every[swap], h + dy[swap], w + dx[swap]
                kept = pixels[n, h, w]
                pixels[n, h, w] = pixels[n, h2, w2]
                pixels[n, h2, w2] = kept
    return _blur_rows(pixels / 255.0, sigma)


def _motion_offsets(angles: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """ImageMagick's motion-blur taps: tap i sits at i pixels along the angle, rounded half down."""
    steps = np.arange(width)[None, :]
    dx = np.ceil(steps * np.cos(angles)[:, None] - 0.5).astype(np.intp)
    dy = np.ceil(steps * np.sin(angles)[:, None] - 0.5).astype(np.intp)
    return dx, dy


def motion_blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ImageMagick's motion blur, radius 10 and sigma 3, at an angle drawn from [-45, 45) degrees.

    The kernel is one-sided: 21 taps weighted ``exp(-i^2 / 18)``, tap ``i`` read
    ``i`` pixels along the angle, with edge pixels repeated outside the image.
    """
    radius, sigma = 10, 3.0
    width = 2 * radius + 1
    weights = np.exp(-np.arange(width) ** 2 / (2 * sigma**2))
    weights /= weights.sum()
    dx, dy = _motion_offsets(np.deg2rad(rng.uniform(-45.0, 45.0, size=len(x))), width)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    every = np.arange(len(x))[:, None, None]
    out = np.zeros_like(x)
    for tap in range(width):
        r = np.clip(rows[None] + dy[:, tap, None, None], 0, SIZE - 1)
        c = np.clip(cols[None] + dx[:, tap, None, None], 0, SIZE - 1)
        out += weights[tap] * x[every, r, c]
    return out


# --------------------------------------------------------------------------- fog and spatter


def _plasma(rng: np.random.Generator, count: int, decay: float, size: int = 256) -> np.ndarray:
    """Diamond-square height maps (wrapping at the edges) scaled to [0, 1], shape (count, size, size).

    The random offset at each level is ``wibble * U(-wibble, wibble)``, wibble
    starting at 100 and divided by ``decay`` per level, as in the reference.
    """
    heights = np.zeros((count, size, size), dtype=np.float32)
    step, wibble = size, 100.0

    def noisy_mean(total: np.ndarray) -> np.ndarray:
        noise = rng.random(total.shape, dtype=np.float32) * np.float32(2 * wibble) - np.float32(wibble)
        return total / 4 + np.float32(wibble) * noise

    while step >= 2:
        half = step // 2
        corners = heights[:, ::step, ::step]
        square = corners + np.roll(corners, -1, axis=1)
        square += np.roll(square, -1, axis=2)
        heights[:, half::step, half::step] = noisy_mean(square)
        centres = heights[:, half::step, half::step]
        horizontal = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        heights[:, ::step, half::step] = noisy_mean(horizontal)
        vertical = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        heights[:, half::step, ::step] = noisy_mean(vertical)
        step, wibble = half, wibble / decay
    heights -= heights.min(axis=(1, 2), keepdims=True)
    return heights / heights.max(axis=(1, 2), keepdims=True)


def fog(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add 3 x the top-left 28x28 of a 256x256 plasma fractal (decay 1.4), then rescale.

    The rescale multiplies by ``m / (m + 3)``, ``m`` the image's own maximum.
    """
    strength, decay, batch = 3.0, 1.4, 8  # small batches of 256x256 maps stay in cache: about 1.5x faster
    haze = np.zeros_like(x)
    for start in range(0, len(x), batch):
        count = min(batch, len(x) - start)
        haze[start : start + count] = _plasma(rng, count, decay)[:, :SIZE, :SIZE]
    peak = x.max(axis=(1, 2), keepdims=True)
    return (x + strength * haze) * peak / (peak + strength)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(x, (0, sigma, sigma), mode="nearest", truncate=4.0)


def spatter(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mud spatter: blobs of grey 63/255 where blurred N(0.65, 0.3) noise stays high.

    Noise blurred with sigma 1 and kept above 0.65 marks the liquid; that mask
    blurred with sigma 1.5 and kept where at least 0.8 is the mud's opacity.
    """
    liquid = _blur(rng.normal(0.65, 0.3, size=x.shape), 1.0)
    mud = _blur((liquid > 0.65).astype(np.float64), 1.5)
    mud[mud < 0.8] = 0.0
    return x * (1.0 - mud) + (63.0 / 255.0) * mud


# --------------------------------------------------------------------------- simple ones


def brightness(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Raise HSV value by 0.5; a grey pixel has no saturation, so that adds 0.5 to its level."""
    return x + 0.5


def stripe(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Invert the 7 leftmost and the 7 rightmost columns."""
    out = x.copy()
    out[:, :, :7] = 1.0 - out[:, :, :7]
    out[:, :, SIZE - 7:] = 1.0 - out[:, :, SIZE - 7:]
    return out


# --------------------------------------------------------------------------- lines


def _line(c0: float, r0: float, c1: float, r1: float) -> np.ndarray:
    """A soft line from (c0, r0) to (c1, r1): ``1 + log(1 - d / 2.3)`` of the vertical distance d.

    Columns left of ``floor(c0)`` and from ``ceil(c1)`` on are blank.
    """
    if c1 == c0:
        return np.zeros((SIZE, SIZE))
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    centre = (r1 - r0) / (c1 - c0) * (cols - c0) + r0
    distance = np.minimum(np.abs(rows - centre), LINE_WIDTH - 1e-10)
    value = np.clip(1.0 + np.log(1.0 - distance / LINE_WIDTH), 0.0, 1.0)
    value[:, : math.floor(c0)] = 0.0
    value[:, math.ceil(c1):] = 0.0
    return value


@cache
def _dotted_lines() -> np.ndarray:
    """Every dotted line MNIST-C can draw, indexed [r0, r1]: (0, r0) to (27, r1), 2-px dashes."""
    gaps = (np.arange(SIZE) // 2) % 2 == 0  # columns 0-1, 4-5, ... are the gaps
    table = np.array([[_line(0, r0, SIZE - 1, r1) for r1 in range(SIZE - 1)] for r0 in range(SIZE - 1)])
    table[..., gaps] = 0.0
    table.flags.writeable = False
    return table


def dotted_line(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add a dashed line from the left edge (row r0) to the right edge (row r1), rows in [0, 26]."""
    ends = rng.integers(0, SIZE - 1, size=(2, len(x)))
    return x + _dotted_lines()[ends[0], ends[1]]


def _zigzag_points(r0: int, rise: int) -> np.ndarray:
    """Corners of a zigzag (teeth 2 px long and 2 px high) from column 2 to 25, rising ``rise`` rows."""
    tooth, height, c0, c1 = 2.0, 2.0, 2, 25
    theta = math.atan(rise / (c1 - c0))
    length = (c1 - c0) / math.cos(theta)
    points = [(0.0, 0.0)]
    for i in range(int((length - tooth) // (2 * tooth)) + 1):
        points.append(((2 * i + 1) * tooth, (-1) ** i * height))
    whole = 2 * tooth * (length // (2 * tooth))
    if length != whole:  # the reference ends on this short, oddly scaled segment
        points.append((length, points[-1][1] / (2 * (length - whole))))
    along, across = np.array(points).T
    cols = math.cos(theta) * along - math.sin(theta) * across + c0
    rows = math.sin(theta) * along + math.cos(theta) * across + r0
    return np.stack([cols, rows], axis=1)


@cache
def _zigzags() -> np.ndarray:
    """Every zigzag MNIST-C can draw, indexed [r0, rise + 5] for r0 in [0, 26], rise in [-5, 4]."""
    def pattern(r0: int, rise: int) -> np.ndarray:
        points = _zigzag_points(r0, rise)
        segments = [_line(*a, *b) for a, b in zip(points[:-1], points[1:], strict=True)]
        return np.sum(segments, axis=0)

    table = np.array([[pattern(r0, rise) for rise in range(-5, 5)] for r0 in range(SIZE - 1)])
    table.flags.writeable = False
    return table


def zigzag(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add a zigzag starting at row r0 in [0, 26] and ending about ``rise`` in [-5, 4] rows lower."""
    r0 = rng.integers(0, SIZE - 1, size=len(x))
    rise = rng.integers(-5, 5, size=len(x))
    return x + _zigzags()[r0, rise + 5]


# --------------------------------------------------------------------------- canny


_SAME_IMAGE_8_NEIGHBOURS = np.zeros((3, 3, 3), dtype=bool)
_SAME_IMAGE_8_NEIGHBOURS[1] = True


def _sobel(x: np.ndarray, axis: int) -> np.ndarray:
    """Sobel derivative along ``axis`` of each image (``ndimage.sobel`` would also mix the batch axis)."""
    other = 3 - axis
    derivative = ndimage.correlate1d(x, [-1.0, 0.0, 1.0], axis=axis, mode="reflect")
    return ndimage.correlate1d(derivative, [1.0, 2.0, 1.0], axis=other, mode="reflect")


def _non_maximum(magnitude: np.ndarray, along_rows: np.ndarray, along_cols: np.ndarray) -> np.ndarray:
    """Pixels whose gradient magnitude is at least the interpolated magnitude on both sides.

    The two neighbours along the gradient are interpolated between the nearest
    axis neighbour and the nearest diagonal one, in each of four sectors.
    """
    padded = np.pad(magnitude, ((0, 0), (1, 1), (1, 1)))

    def at(dr: int, dc: int) -> np.ndarray:
        return padded[:, 1 + dr : 1 + dr + SIZE, 1 + dc : 1 + dc + SIZE]

    gi, gj = np.abs(along_rows), np.abs(along_cols)
    same_sign = along_rows * along_cols >= 0
    steep = gi >= gj
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(steep, gj / gi, gi / gj)
    # sector: (is it this sector, axis neighbour, diagonal neighbour) on the "+" side; "-" is mirrored
    sectors = [
        (same_sign & steep, (1, 0), (1, 1)),
        (same_sign & ~steep, (0, 1), (1, 1)),
        (~same_sign & ~steep, (0, 1), (-1, 1)),
        (~same_sign & steep, (-1, 0), (-1, 1)),
    ]
    maxima = np.zeros(magnitude.shape, dtype=bool)
    for member, (ar, ac), (dr, dc) in sectors:
        plus = at(dr, dc) * ratio + at(ar, ac) * (1 - ratio)
        minus = at(-dr, -dc) * ratio + at(-ar, -ac) * (1 - ratio)
        maxima = np.where(member, (plus <= magnitude) & (minus <= magnitude), maxima)
    return maxima


def canny_edges(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Canny edges: Gaussian (sigma 1), Sobel, non-maximum suppression, hysteresis 0.1 / 0.2.

    The blur pads with zeros and divides by the blur of an all-ones image, so
    the border is not darkened; the 1-pixel border itself never holds an edge.
    """
    ones = np.ones((1, SIZE, SIZE))
    smooth = ndimage.gaussian_filter(x, (0, 1.0, 1.0), mode="constant")
    smooth /= ndimage.gaussian_filter(ones, (0, 1.0, 1.0), mode="constant") + np.finfo(float).eps
    along_rows, along_cols = _sobel(smooth, axis=1), _sobel(smooth, axis=2)
    magnitude = np.hypot(along_rows, along_cols)
    interior = np.zeros_like(magnitude, dtype=bool)
    interior[:, 1:-1, 1:-1] = True
    maxima = _non_maximum(magnitude, along_rows, along_cols) & interior & (magnitude > 0)
    weak, strong = maxima & (magnitude >= 0.1), maxima & (magnitude >= 0.2)
    segments, count = ndimage.label(weak, _SAME_IMAGE_8_NEIGHBOURS)
    has_strong = np.bincount(segments.ravel(), weights=strong.ravel(), minlength=count + 1) > 0
    has_strong[0] = False
    return has_strong[segments].astype(np.float64)


# --------------------------------------------------------------------------- registry


CORRUPTIONS: dict[str, Corruption] = {
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "shear": shear,
    "scale": scale,
    "rotate": rotate,
    "brightness": brightness,
    "translate": translate,
    "stripe": stripe,
    "fog": fog,
    "spatter": spatter,
    "dotted_line": dotted_line,
    "zigzag": zigzag,
    "canny_edges": canny_edges,
}


def lookup(name: str) -> Corruption:
    """The corruption called ``name``; ValueError listing the known ones otherwise."""
    try:
        return CORRUPTIONS[name]
    except KeyError:
        raise ValueError(f"unknown MNIST-C corruption {name!r}; known: {', '.join(CORRUPTIONS)}") from None


def split_seed(name: str, split: str) -> int:
    """The fixed seed of one corrupted split: 0 for train, 1 for test, plus a per-corruption offset.

    The offset is a CRC of the name, so adding a corruption never changes another's images.
    """
    splits = {"train": 0, "test": 1}
    if split not in splits:
        raise ValueError(f"MNIST-C split must be one of {sorted(splits)}, not {split!r}")
    lookup(name)
    return splits[split] + 2 * zlib.crc32(name.encode())


def corrupt(images: np.ndarray, name: str, seed: int) -> np.ndarray:
    """Apply the corruption ``name`` to uint8 images (N, 1, 28, 28); the same seed gives the same bytes.

    One Generator seeded with ``seed`` supplies every image's random draws in
    order, so the output depends on the seed and on the images' order.
    """
    function = lookup(name)
    if images.dtype != np.uint8 or images.shape[1:] != (1, SIZE, SIZE):
        raise ValueError(f"expected uint8 images of shape (N, 1, {SIZE}, {SIZE}), got "
                         f"{images.dtype} {images.shape}")
    rng = np.random.default_rng(seed)
    out = np.empty_like(images)
    for start in range(0, len(images), CHUNK):
        chunk = images[start : start + CHUNK, 0] / 255.0
        corrupted = function(chunk, rng)
        out[start : start + CHUNK, 0] = np.rint(np.clip(corrupted, 0.0, 1.0) * 255.0).astype(np.uint8)
    return out
