"""Random tamper masks with a controlled tampered share (RST) and largest region share (RLT).

The paper (section 4.2) describes tampers by two numbers: RST, the share of the image that is
tampered in total, and RLT, the share taken by the largest single tampered region. The masks here
are drawn to land near targets for both, with TensorFlow ops only and a stateless seed, so they
work inside ``tf.data.Dataset.map`` and ``tf.function`` and are reproducible.

Masks are float32 ``[S, S, 1]`` with 1 = tampered.
"""

import functools
import math

import numpy as np
import tensorflow as tf

from imuge_tf.attacks.names import check_names

SHAPES = ("rectangle", "ellipse", "polygon", "blob")
DEFAULT_SHAPES = ("rectangle", "ellipse", "polygon")

MIN_IMAGE_SIZE = 8
MAX_REGIONS = 16

# Secondary regions smaller than this share of the image are not worth a region of their own
# (a handful of pixels at small sizes): their area is given to the largest region instead.
_MIN_REGION_SHARE = 0.004
# Random polygons: a vertex count in [min, max], vertex radii in [_POLY_MIN_RADIUS, 1].
_POLY_MIN_VERTICES = 5
_POLY_MAX_VERTICES = 10
_POLY_MIN_RADIUS = 0.45
# Angular jitter of polygon vertices, as a fraction of the even spacing. Kept below 0.5 so that
# consecutive vertices stay less than 180 degrees apart and each edge is seen from the centre.
_POLY_JITTER = 0.3
# Blobs: radius 1 + sum_k c_k cos(k * phi + p_k) with c_k <= these bounds (sum < 1, so r > 0).
_BLOB_AMPLITUDES = (0.15, 0.25, 0.12, 0.08)
# Rectangles and ellipses: aspect ratio in [1 / _MAX_ASPECT, _MAX_ASPECT].
_MAX_ASPECT = 3.0
# Angular resolution of the boundary tables of star-shaped regions (ellipse, polygon, blob).
_ANGLE_BINS = 4096


def _check_range(name, value):
    """Validates a (min, max) pair of image shares and returns it as floats."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (min, max), got {value!r}") from None
    if not (0.0 < low < 1.0 and 0.0 < high < 1.0):
        raise ValueError(f"{name} values must lie in (0, 1), got {value!r}")
    if low > high:
        raise ValueError(f"{name} must have min <= max, got {value!r}")
    return low, high


def validate_mask_arguments(image_size, area_range, largest_range, max_regions, shapes):
    """Checks the arguments of `random_tamper_mask`; returns them normalized.

    Returns (image_size, area_range, largest_range, max_regions, shapes) with ranges as float
    pairs and shapes as a tuple of names. Raises ValueError with a readable message.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise ValueError(f"image_size must be an int, got {image_size!r}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    area_range = _check_range("area_range", area_range)
    largest_range = _check_range("largest_range", largest_range)
    if isinstance(max_regions, bool) or not isinstance(max_regions, (int, np.integer)):
        raise ValueError(f"max_regions must be an int, got {max_regions!r}")
    if not 1 <= max_regions <= MAX_REGIONS:
        raise ValueError(f"max_regions must be in [1, {MAX_REGIONS}], got {max_regions}")
    if isinstance(shapes, str):
        shapes = (shapes,)
    shapes = check_names("mask shapes", shapes, SHAPES)
    return int(image_size), area_range, largest_range, int(max_regions), shapes


_POLY_SLOTS = _POLY_MAX_VERTICES + 1  # one more than the most vertices: it closes the polygon
_BLOB_HARMONICS = len(_BLOB_AMPLITUDES)
# Uniform numbers each region consumes, in this order: shape choice (1), rectangle (1),
# ellipse (2), polygon (vertex count, jitters, radii, rotation), blob (amplitudes, phases),
# position (2).
_SHAPE_DRAWS = {
    "rectangle": 1,
    "ellipse": 2,
    "polygon": 2 + 2 * _POLY_SLOTS,
    "blob": 2 * _BLOB_HARMONICS,
}
_REGION_DRAWS = 1 + sum(_SHAPE_DRAWS.values()) + 2
# Where to place a region is searched on a grid of about this many cells per side (one cell per
# `factor` x `factor` pixels): the search costs an FFT of the grid, not of the image.
_PLACEMENT_GRID = 64


class _Draws:
    """Hands out consecutive slices of a 1-D tensor of uniform random numbers."""

    def __init__(self, uniforms):
        self._uniforms = uniforms
        self._next = 0

    def take(self, count):
        start, self._next = self._next, self._next + count
        if self._next > self._uniforms.shape[0]:
            raise AssertionError("mask generator drew more random numbers than it reserved")
        return self._uniforms[start : self._next]


def _draw_areas(u, area_range, largest_range, max_regions):
    """Number of regions and each region's target share of the image.

    u: uniforms [2 + max_regions]. Returns (count, shares): an int32 scalar in [1, max_regions]
    and float32 [max_regions] shares, largest first; shares past `count` are zero.
    """
    rst = area_range[0] + (area_range[1] - area_range[0]) * u[0]
    rlt = largest_range[0] + (largest_range[1] - largest_range[0]) * u[1]
    rlt = tf.minimum(rlt, rst)
    # With at most max_regions regions, none larger than RLT, RST needs RLT >= RST / max_regions.
    rlt = tf.maximum(rlt, rst / max_regions)
    rest = rst - rlt
    tiny = rest < _MIN_REGION_SHARE
    rlt = tf.where(tiny, rst, rlt)
    rest = tf.where(tiny, 0.0, rest)

    # Fewest regions that hold the rest without exceeding RLT; most that keep each one sizeable.
    n_min = tf.where(tiny, 1.0, 1.0 + tf.math.ceil(rest / rlt - 1e-4))
    n_max = tf.where(tiny, 1.0, 1.0 + tf.math.floor(rest / _MIN_REGION_SHARE))
    n_max = tf.clip_by_value(n_max, n_min, float(max_regions))
    n_min = tf.minimum(n_min, n_max)
    count = n_min + tf.math.floor(u[2] * (n_max - n_min + 1.0))
    count = tf.cast(tf.clip_by_value(count, n_min, n_max), tf.int32)

    if max_regions == 1:
        return count, rlt[None]
    active = tf.cast(tf.range(1, max_regions) < count, tf.float32)
    weights = (0.4 + 1.2 * u[3 : 2 + max_regions]) * active
    shares = rest * weights / tf.maximum(tf.reduce_sum(weights), 1e-12)
    # Cap every secondary region at RLT and hand the excess to the others in proportion to
    # their headroom; one step is exact because count was chosen so that rest <= (n-1) * RLT.
    capped = tf.minimum(shares, rlt)
    excess = rest - tf.reduce_sum(capped)
    headroom = (rlt - capped) * active
    capped += excess * headroom / tf.maximum(tf.reduce_sum(headroom), 1e-12)
    return count, tf.concat([rlt[None], capped], axis=0)


@functools.lru_cache(maxsize=8)
def _polar_grid(size):
    """Pixel-centre distance to the canvas centre and angle bin, as numpy [S, S] arrays."""
    coords = np.arange(size, dtype=np.float64) + 0.5 - size / 2.0
    grid_x, grid_y = coords[None, :], coords[:, None]
    radius = np.hypot(grid_x, grid_y).astype(np.float32)
    angle = np.arctan2(grid_y, grid_x)
    bins = np.rint(angle / (2.0 * math.pi) * _ANGLE_BINS).astype(np.int64) % _ANGLE_BINS
    return radius, bins.astype(np.int32)


def _aspect(u):
    """An aspect ratio log-uniform in [1 / _MAX_ASPECT, _MAX_ASPECT] from a uniform u."""
    return tf.exp((2.0 * u - 1.0) * math.log(_MAX_ASPECT))


# A centre pixel lies 0.5 * sqrt(2) from the canvas centre; no region is smaller than the
# four pixels around the centre, so even a sub-pixel target area gives a non-empty region.
_MIN_RADIUS = 0.75


def _rectangle(u, area, size):
    """Axis-aligned rectangle of `area` pixels centred on the canvas, float32 [S, S]."""
    aspect = _aspect(u[0])
    width = tf.clip_by_value(tf.sqrt(area * aspect), 2.0 * _MIN_RADIUS, size - 2.0)
    height = tf.clip_by_value(tf.sqrt(area / aspect), 2.0 * _MIN_RADIUS, size - 2.0)
    coords = tf.abs(tf.range(size, dtype=tf.float32) + 0.5 - size / 2.0)
    columns = tf.cast(coords < width / 2.0, tf.float32)
    rows = tf.cast(coords < height / 2.0, tf.float32)
    return rows[:, None] * columns[None, :]


# The other shapes are star-shaped around the centre: each is given by its boundary radius as a
# function of the angle, tabulated over _ANGLE_BINS angles; a pixel is inside when its distance
# to the centre is at most the radius in its angle bin. One gather per pixel rasterizes any of
# them, and rotating a shape only shifts the angles of its table.


def _ellipse_radius(u, area, phi, size):
    """Boundary radius of a rotated ellipse of `area` pixels at angles `phi`."""
    aspect = _aspect(u[0])
    limit = size / 2.0 - 1.0
    semi_a = tf.minimum(tf.sqrt(area * aspect / math.pi), limit)
    semi_b = tf.minimum(tf.sqrt(area / (aspect * math.pi)), limit)
    relative = phi - u[1] * math.pi
    return (
        semi_a
        * semi_b
        / tf.sqrt((semi_b * tf.cos(relative)) ** 2 + (semi_a * tf.sin(relative)) ** 2)
    )


def _polygon_radius(u, area, phi, size):
    """Boundary radius of a random star-shaped polygon of `area` pixels at angles `phi`.

    Vertices sit at jittered, evenly spaced angles with random radii.
    """
    slots = _POLY_SLOTS
    choices = _POLY_MAX_VERTICES - _POLY_MIN_VERTICES + 1
    vertices = _POLY_MIN_VERTICES + tf.minimum(tf.cast(u[0] * choices, tf.int32), choices - 1)
    step = 2.0 * math.pi / tf.cast(vertices, tf.float32)
    jitter = _POLY_JITTER * (2.0 * u[1 : 1 + slots] - 1.0)
    jitter *= tf.cast(tf.range(slots) > 0, tf.float32)  # vertex 0 at angle 0 anchors the order
    active = tf.range(slots) < vertices
    angles = tf.where(active, (tf.range(slots, dtype=tf.float32) + jitter) * step, 2.0 * math.pi)
    radii = _POLY_MIN_RADIUS + (1.0 - _POLY_MIN_RADIUS) * u[1 + slots : 1 + 2 * slots]
    radii = tf.where(active, radii, radii[0])  # the closing slots repeat vertex 0

    triangles = 0.5 * radii[:-1] * radii[1:] * tf.sin(angles[1:] - angles[:-1])
    unit_area = tf.reduce_sum(tf.where(active[:-1], triangles, 0.0))
    scale = tf.sqrt(area / unit_area)
    scale = tf.minimum(scale, (size / 2.0 - 1.0) / tf.reduce_max(radii))

    phi = tf.math.floormod(phi - 2.0 * math.pi * u[1 + 2 * slots], 2.0 * math.pi)
    edge = tf.searchsorted(angles[None, :], phi[None, :], side="right")[0] - 1
    edge = tf.clip_by_value(edge, 0, slots - 2)
    theta0, theta1 = tf.gather(angles, edge), tf.gather(angles, edge + 1)
    r0, r1 = tf.gather(radii, edge), tf.gather(radii, edge + 1)
    # Distance from the centre to the edge (r0 at theta0, r1 at theta1) along direction phi.
    denominator = r0 * tf.sin(phi - theta0) + r1 * tf.sin(theta1 - phi)
    return scale * r0 * r1 * tf.sin(theta1 - theta0) / tf.maximum(denominator, 1e-6)


def _blob_radius(u, area, phi, size):
    """Boundary radius of a smooth random blob (a short Fourier series) of `area` pixels."""
    amplitudes = u[:_BLOB_HARMONICS] * tf.constant(_BLOB_AMPLITUDES, tf.float32)
    phases = 2.0 * math.pi * u[_BLOB_HARMONICS : 2 * _BLOB_HARMONICS]
    # Mean of r^2 over the circle is 1 + sum(c_k^2) / 2, so the area is pi * that * scale^2.
    unit_area = math.pi * (1.0 + 0.5 * tf.reduce_sum(amplitudes**2))
    scale = tf.sqrt(area / unit_area)
    scale = tf.minimum(scale, (size / 2.0 - 1.0) / (1.0 + tf.reduce_sum(amplitudes)))
    orders = tf.range(1, _BLOB_HARMONICS + 1, dtype=tf.float32)
    waves = tf.cos(orders * phi[:, None] + phases)
    return scale * (1.0 + tf.reduce_sum(amplitudes * waves, axis=-1))


_RADIUS_FUNCTIONS = {
    "ellipse": _ellipse_radius,
    "polygon": _polygon_radius,
    "blob": _blob_radius,
}


def _star_raster(radius_function, u, area, size):
    phi = tf.range(_ANGLE_BINS, dtype=tf.float32) * (2.0 * math.pi / _ANGLE_BINS)
    table = tf.maximum(radius_function(u, area, phi, float(size)), _MIN_RADIUS)
    radius, bins = _polar_grid(size)
    return tf.cast(radius <= tf.gather(table, bins), tf.float32)


def _shape_raster(u, area, size, shapes):
    """A random shape of `area` pixels, centred on the canvas, as float32 [S, S].

    u: the region's uniforms (the shape choice first, then every shape's parameters).
    """
    params, start = {}, 1
    for name in SHAPES:
        params[name] = u[start : start + _SHAPE_DRAWS[name]]
        start += _SHAPE_DRAWS[name]

    def branch(name):
        if name == "rectangle":
            return lambda: _rectangle(params[name], area, float(size))
        return lambda: _star_raster(_RADIUS_FUNCTIONS[name], params[name], area, size)

    if len(shapes) == 1:
        return branch(shapes[0])()
    choice = tf.minimum(tf.cast(u[0] * len(shapes), tf.int32), len(shapes) - 1)
    return tf.switch_case(choice, [branch(name) for name in shapes])


def _placement_factor(size):
    """Pixels per side of a placement-grid cell: a power of two dividing `size`."""
    factor = 1
    while size % (2 * factor) == 0 and size // (2 * factor) >= _PLACEMENT_GRID:
        factor *= 2
    return factor


def _pool(raster, factor):
    """Which factor x factor cells of a [S, S] raster hold any pixel: [S/f, S/f]."""
    if factor == 1:
        return raster
    cells = raster.shape[0] // factor
    return tf.reduce_max(tf.reshape(raster, [cells, factor, cells, factor]), axis=[1, 3])


def _span(profile, size):
    """First and last index where a [S] 0/1 profile is set."""
    first = tf.argmax(profile, output_type=tf.int32)
    last = size - 1 - tf.argmax(tf.reverse(profile, [0]), output_type=tf.int32)
    return first, last


def _place_first(u, raster, size):
    """Moves a centred raster [S, S] to a uniformly random position inside the canvas."""
    top, bottom = _span(tf.reduce_max(raster, axis=1), size)
    left, right = _span(tf.reduce_max(raster, axis=0), size)
    # Shifts from -first to size - 1 - last keep the shape whole: size - (last - first) choices.
    row_choices, column_choices = size - bottom + top, size - right + left
    rows = tf.cast(u[0] * tf.cast(row_choices, tf.float32), tf.int32)
    columns = tf.cast(u[1] * tf.cast(column_choices, tf.float32), tf.int32)
    rows = tf.minimum(rows, row_choices - 1) - top
    columns = tf.minimum(columns, column_choices - 1) - left
    return tf.roll(raster, shift=[rows, columns], axis=[0, 1])


def _place(u, mask, cells, raster, size, factor):
    """Adds a centred raster to `mask` at a random shift where it touches nothing.

    The search runs on the grid of factor x factor cells: `cells` marks the cells the mask
    touches; a shift (a whole number of cells) is free when the cells of the shape avoid those
    cells and their neighbours, so regions stay at least `factor` pixels apart (one pixel at
    factor 1, also diagonally). Every shift that keeps the shape inside the image is scored by
    its overlap, all at once with an FFT cross-correlation, and one is drawn uniformly among the
    best (free ones when there are any). Returns the new (mask, cells).
    """
    grid = size // factor
    footprint = _pool(raster, factor)
    occupied = tf.nn.max_pool2d(cells[None, :, :, None], 3, 1, "SAME")[0, :, :, 0]
    spectrum = tf.math.conj(tf.signal.rfft2d(footprint)) * tf.signal.rfft2d(occupied)
    overlap = tf.round(tf.signal.irfft2d(spectrum, fft_length=[grid, grid]))

    def allowed(profile):
        # Cell shifts (mod grid) that keep the pixel span [first, last] inside the image.
        first, last = _span(profile, size)
        index = tf.range(grid)
        return (index <= (size - 1 - last) // factor) | (index >= grid - first // factor)

    valid = (
        allowed(tf.reduce_max(raster, axis=1))[:, None]
        & allowed(tf.reduce_max(raster, axis=0))[None, :]
    )
    cost = tf.reshape(tf.where(valid, overlap, np.inf), [-1])
    best = cost <= tf.reduce_min(cost)
    # The k-th best shift with k uniform: an exact uniform choice from one random number.
    ranks = tf.cumsum(tf.cast(best, tf.int32))
    k = tf.minimum(tf.cast(u[0] * tf.cast(ranks[-1], tf.float32), tf.int32), ranks[-1] - 1)
    pick = tf.argmax(ranks > k, output_type=tf.int32)
    rows, columns = pick // grid, pick % grid
    placed = tf.roll(raster, shift=[rows * factor, columns * factor], axis=[0, 1])
    moved = tf.roll(footprint, shift=[rows, columns], axis=[0, 1])
    return tf.maximum(mask, placed), tf.maximum(cells, moved)


# Plain TF ops with explicit tf.cond / tf.switch_case: AutoGraph has nothing to convert, and
# skipping it makes tracing (in tf.function and tf.data) several times faster.
@tf.autograph.experimental.do_not_convert
def random_tamper_mask(
    seed,
    image_size,
    *,
    area_range=(0.10, 0.30),
    largest_range=(0.06, 0.16),
    max_regions=4,
    shapes=DEFAULT_SHAPES,
):
    """Draws a binary tamper mask, float32 [image_size, image_size, 1] with 1 = tampered.

    Targets RST ~ U(area_range) (total tampered share) and RLT ~ U(largest_range) (share of the
    largest connected region) are drawn, then 1..max_regions regions are placed at random,
    apart from each other where they fit: the largest with area RLT, the others sharing
    RST - RLT, none larger than RLT. RLT is lowered to RST when it exceeds it, and raised to
    RST / max_regions when fewer regions could not reach RST. Shapes are drawn per region from
    `shapes`: "rectangle" (axis-aligned), "ellipse" (rotated), "polygon" (random star-shaped),
    "blob" (smooth random outline). Large or crowded targets are best effort: a region stays
    inside the image (so one region covers only part of it, how much depends on its shape),
    and when regions do not fit apart they may touch or overlap (RST lower, RLT higher than
    drawn).

    Args:
      seed: int32/int64 tensor of shape [2], a stateless random seed.
      image_size: the side S of the square mask, a Python int.
      area_range, largest_range: (min, max) shares of the image, in (0, 1).
      max_regions: the most regions in one mask, 1..16.
      shapes: names from SHAPES.

    Works eagerly, in tf.function and in tf.data; the same seed gives the same mask. The work is
    bounded: per region, a few passes over the image and an FFT of a ~64 x 64 grid.
    """
    size, area_range, largest_range, max_regions, shapes = validate_mask_arguments(
        image_size, area_range, largest_range, max_regions, shapes
    )
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer:
        raise ValueError(f"seed must be an integer tensor of shape [2], got {seed.dtype.name}")
    if seed.dtype not in (tf.int32, tf.int64):
        seed = tf.cast(seed, tf.int64)
    seed.shape.assert_is_compatible_with([2])

    draws = _Draws(tf.random.stateless_uniform([2 + max_regions * (1 + _REGION_DRAWS)], seed))
    count, shares = _draw_areas(draws.take(2 + max_regions), area_range, largest_range, max_regions)
    pixels = float(size * size)
    factor = _placement_factor(size)

    # The first (largest) region has the canvas to itself: any position inside will do.
    u = draws.take(_REGION_DRAWS)
    mask = _place_first(u[-2:], _shape_raster(u, shares[0] * pixels, size, shapes), size)
    cells = _pool(mask, factor)
    for region in range(1, max_regions):
        u = draws.take(_REGION_DRAWS)

        def add_region(u=u, region=region, mask=mask, cells=cells):
            raster = _shape_raster(u, shares[region] * pixels, size, shapes)
            return _place(u[-2:], mask, cells, raster, size, factor)

        mask, cells = tf.cond(
            region < count, add_region, lambda mask=mask, cells=cells: (mask, cells)
        )
    return mask[:, :, None]


@tf.autograph.experimental.do_not_convert
def random_tamper_masks(seeds, image_size, **kwargs):
    """One `random_tamper_mask` per seed: seeds [B, 2] -> float32 [B, S, S, 1].

    Keyword arguments are those of `random_tamper_mask`; mask b depends on seeds[b] only.
    """
    size = validate_mask_arguments(
        image_size,
        kwargs.get("area_range", (0.10, 0.30)),
        kwargs.get("largest_range", (0.06, 0.16)),
        kwargs.get("max_regions", 4),
        kwargs.get("shapes", DEFAULT_SHAPES),
    )[0]
    return tf.map_fn(
        lambda seed: random_tamper_mask(seed, size, **kwargs),
        tf.convert_to_tensor(seeds),
        fn_output_signature=tf.TensorSpec([size, size, 1], tf.float32),
    )


def mask_statistics(mask):
    """(RST, RLT) of one binary mask ([H, W] or [H, W, 1], array or tensor), in numpy.

    RST is the tampered share of the image, RLT the share of the largest connected tampered
    region (8-connected: regions touching only at a corner count as one). Values > 0.5 count as
    tampered.
    """
    from scipy import ndimage  # scipy comes with scikit-image; only tests/evaluation need it

    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W] or [H, W, 1], got shape {mask.shape}")
    binary = mask > 0.5
    total = binary.size
    labels, count = ndimage.label(binary, structure=np.ones((3, 3), bool))
    if count == 0:
        return 0.0, 0.0
    largest = np.bincount(labels.ravel())[1:].max()
    return float(binary.sum() / total), float(largest / total)
