#!/usr/bin/env python
"""Render the sample product photos (bottle, can, carton, mug) and a ground-truth mask for each.

Every photo is drawn procedurally to look like a phone picture of a product on a desk: a textured
background (wood, fabric, or a painted wall behind a table), side lighting with a brightness
gradient and vignetting, soft contact and cast shadows, shaded glossy cylinders with specular
highlights, printed labels with a logo, clutter around the product (pens, paper notes, coins, a
hand entering from the edge of the frame), then defocus, sensor noise and JPEG compression.
Product and label colours are drawn from one palette for all classes, so colour alone does not
tell the classes apart: the shape does.

Each photo OUT/<class>/<class>_NNN.jpg has a mask MASKS/<class>/<class>_NNN.png (mode L,
255 on the visible product, 0 elsewhere, same size as the photo): clutter lying over the product
is cut out of the mask. Drawing happens at three times the output size and is then reduced, which
anti-aliases every edge. The same --seed gives the same files; image NNN of a class does not
depend on --per-class. Needs only NumPy and Pillow.
"""

from __future__ import annotations

import argparse
import colorsys
import dataclasses
import io
import math
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageFilter

CLASSES = ("bottle", "can", "carton", "mug")
SUPERSAMPLE = 3
SCRIPT_DIR = Path(__file__).resolve().parent

Array = np.ndarray


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """How varied the photos are. Lengths are fractions of the frame side, angles degrees."""

    product_height: tuple[float, float]
    offset: float              # largest shift of the product from the frame centre
    tilt: float                # largest in-plane rotation of the product
    clutter: tuple[int, int]   # distractor objects per photo, inclusive range
    occlusion: float           # chance that a pen or note lies over the product
    hand: float                # chance of a hand reaching in from the frame edge
    min_visible: float         # least share of the product the clutter must leave visible
    camouflage: float          # chance that the product's main colour is close to the background's
    inside: float              # least share of the product's bounding box inside the frame
    blur: tuple[float, float]  # Gaussian defocus radius, output pixels
    noise: tuple[float, float]  # sensor noise standard deviation, 0-255 scale
    jpeg_quality: tuple[int, int]
    size: int                  # default output size
    per_class: int             # default photos per class


DIFFICULTIES = {
    "standard": Difficulty(
        product_height=(0.68, 0.88), offset=0.06, tilt=3.0, clutter=(1, 2), occlusion=0.08, hand=0.08,
        min_visible=0.8, camouflage=0.0, inside=1.0, blur=(0.0, 0.4), noise=(1.5, 3.5), jpeg_quality=(60, 80),
        size=96, per_class=300,
    ),
    "hard": Difficulty(
        product_height=(0.3, 0.88), offset=0.25, tilt=20.0, clutter=(3, 7), occlusion=0.45, hand=0.35,
        min_visible=0.5, camouflage=0.3, inside=0.85, blur=(0.0, 0.9), noise=(2.0, 7.0), jpeg_quality=(60, 90),
        size=64, per_class=300,
    ),
    "severe": Difficulty(
        product_height=(0.22, 0.75), offset=0.3, tilt=35.0, clutter=(5, 9), occlusion=0.6, hand=0.5,
        min_visible=0.4, camouflage=0.5, inside=0.75, blur=(0.2, 1.2), noise=(3.0, 9.0), jpeg_quality=(45, 85),
        size=64, per_class=300,
    ),
}


# drawing primitives ------------------------------------------------------------------------------

class Canvas:
    """A square float RGB picture in [0, 1] at the drawing resolution, with pixel-centre coordinates."""

    def __init__(self, side: int):
        self.side = side
        centres = np.arange(side, dtype=np.float32) + 0.5
        self.x, self.y = np.meshgrid(centres, centres)
        self.rgb = np.zeros((side, side, 3), np.float32)

    def paint(self, rgb: Array, alpha: Array) -> None:
        """Lay ``rgb`` (an image or one colour) over the picture where ``alpha`` (0-1) says."""
        a = alpha[..., None]
        self.rgb = self.rgb * (1.0 - a) + rgb * a

    def darken(self, amount: Array) -> None:
        """Multiply the picture by ``1 - amount`` (a shadow)."""
        self.rgb *= (1.0 - amount)[..., None]

    def turned(self, cx: float, cy: float, degrees: float) -> tuple[Array, Array]:
        """Offsets from (cx, cy) in a frame turned by ``degrees``: (across, down) of that frame."""
        t = math.radians(degrees)
        dx, dy = self.x - cx, self.y - cy
        return dx * math.cos(t) + dy * math.sin(t), -dx * math.sin(t) + dy * math.cos(t)

    def capsule(self, p0: tuple[float, float], p1: tuple[float, float], radius: float) -> tuple[Array, Array]:
        """Mask of the points within ``radius`` of the segment p0-p1, and their signed offset across it
        in radii (for rounded shading)."""
        (x0, y0), (x1, y1) = p0, p1
        dx, dy = x1 - x0, y1 - y0
        length = math.hypot(dx, dy) or 1.0
        t = np.clip(((self.x - x0) * dx + (self.y - y0) * dy) / length**2, 0.0, 1.0)
        distance = np.hypot(x0 + t * dx - self.x, y0 + t * dy - self.y)
        across = ((self.x - x0) * -dy + (self.y - y0) * dx) / length / radius
        return distance <= radius, np.clip(across, -1.0, 1.0)


def smooth_noise(rng: np.random.Generator, side: int, cells_y: int, cells_x: int | None = None) -> Array:
    """Noise in about [0, 1] that changes over side/cells pixels (random cells, bicubic upsampling)."""
    cells = rng.random((cells_y, cells_x or cells_y)).astype(np.float32)
    return np.asarray(Image.fromarray(cells).resize((side, side), Image.Resampling.BICUBIC))


def fractal_noise(rng: np.random.Generator, side: int, cells: int, octaves: int = 3) -> Array:
    """Sum of ``octaves`` layers of smooth noise, each twice as fine and half as strong, in [0, 1]."""
    total = sum(0.5**k * smooth_noise(rng, side, cells * 2**k) for k in range(octaves))
    return total / sum(0.5**k for k in range(octaves))


def blur(values: Array, radius: float) -> Array:
    """Gaussian blur of a 0-1 float map (through an 8-bit image: enough for shadows and shading)."""
    image = Image.fromarray(np.clip(values * 255.0, 0, 255).astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255.0


def shift(values: Array, dx: float, dy: float) -> Array:
    """A map moved by whole pixels (dx right, dy down), zero where nothing moved in."""
    dx, dy = int(round(dx)), int(round(dy))
    out = np.zeros_like(values)
    h, w = values.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        values[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def hsv(h: float, s: float, v: float) -> Array:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


def product_colour(rng: np.random.Generator) -> Array:
    """Any colour a package may have; the same palette for every class."""
    if rng.random() < 0.2:
        return hsv(0.0, 0.0, rng.choice([rng.uniform(0.08, 0.25), rng.uniform(0.45, 0.65), rng.uniform(0.82, 0.96)]))
    return hsv(rng.random(), rng.uniform(0.3, 0.9), rng.uniform(0.35, 0.95))


def mix(a: Array, b: Array, t: Array) -> Array:
    """Per-pixel blend from colour ``a`` (t=0) to ``b`` (t=1)."""
    return a + (b - a) * t[..., None]


# light -------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Light:
    """A soft key light beside the camera. ``azimuth`` in radians: negative from the left."""

    azimuth: float
    ambient: float
    strength: float  # brightness gradient across the frame

    @property
    def side(self) -> float:
        return math.sin(self.azimuth)


def cylinder_shading(phi: Array, light: Light, gloss: float, width: float) -> tuple[Array, Array]:
    """Diffuse factor and specular term on a vertical cylinder at surface angle ``phi`` (0 faces the
    camera): a main highlight halfway to the light and a weaker one from a fill light opposite."""
    diffuse = light.ambient + (1 - light.ambient) * np.clip(np.cos(phi - light.azimuth), 0, 1)
    diffuse = diffuse * (0.8 + 0.2 * np.cos(phi))
    key = np.exp(-(((phi - light.azimuth / 2) / width) ** 2))
    fill = np.exp(-(((phi + light.azimuth / 2 + 0.35 * np.sign(light.azimuth)) / (1.6 * width)) ** 2))
    return diffuse, gloss * (key + 0.3 * fill)


# labels ------------------------------------------------------------------------------------------

LOGOS = ("circle", "ring", "star", "diamond", "triangle", "square")


def logo_mask(kind: str, a: Array, b: Array) -> Array:
    """A logo of unit radius in label coordinates centred on the logo."""
    rho = np.hypot(a, b)
    if kind == "circle":
        return rho <= 1
    if kind == "ring":
        return (rho <= 1) & (rho >= 0.6)
    if kind == "star":
        theta = np.arctan2(b, a) + math.pi / 2
        return rho <= 0.5 + 0.5 * np.abs(np.cos(2.5 * theta)) ** 3
    if kind == "diamond":
        return np.abs(a) + np.abs(b) <= 1
    if kind == "triangle":
        return (b <= 0.7) & (b >= -1 + 1.7 * np.abs(a))
    return (np.abs(a) <= 0.8) & (np.abs(b) <= 0.8)


def print_design(rng: np.random.Generator, s: Array, t: Array, ground: Array, width: float, height: float) -> Array:
    """A printed label: ground colour, maybe a stripe, a logo and lines of small text.

    ``s`` (across) and ``t`` (down) are label coordinates with (0, 0) at the label's top-middle,
    in the same unit; ``width`` and ``height`` give the printable area.
    """
    rgb = np.broadcast_to(ground, s.shape + (3,)).copy()
    accent = product_colour(rng)
    if rng.random() < 0.6:
        top, thickness = rng.uniform(0.0, 0.7) * height, rng.uniform(0.08, 0.25) * height
        stripe = (t >= top) & (t <= top + thickness)
        if rng.random() < 0.5:
            stripe = (t >= top + 0.15 * height * np.sin(s / width * 6 + rng.uniform(0, 6))) & (t <= top + thickness)
        rgb[stripe] = accent
    logo_size = rng.uniform(0.18, 0.32) * min(width, height)
    lx, ly = rng.uniform(-0.15, 0.15) * width, rng.uniform(0.3, 0.55) * height
    logo = logo_mask(str(rng.choice(LOGOS)), (s - lx) / logo_size, (t - ly) / logo_size)
    rgb[logo] = product_colour(rng)
    ink = hsv(0, 0, 0.1) if ground.mean() > 0.45 else hsv(0, 0, 0.95)
    spacing = rng.uniform(0.07, 0.12) * height
    first = ly + logo_size * 1.3
    row = np.floor((t - first) / spacing)
    words = np.sin(s / spacing * rng.uniform(1.5, 3.0) + row * 2.1) > -0.4
    text = (t >= first) & (row < rng.integers(1, 4)) & ((t - first) % spacing < 0.45 * spacing)
    text &= (np.abs(s) < 0.35 * width) & words
    rgb[text] = ink
    return rgb


# products ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a product stands: the middle of its base, its height and half width (pixels), its tilt
    (degrees) and how far the camera looks down (height / width of a round top)."""

    base_x: float
    base_y: float
    height: float
    half_width: float
    tilt: float
    elevation: float


@dataclasses.dataclass
class Layer:
    """A drawn object: its colours over the whole canvas and where it is (alpha 0-1)."""

    rgb: Array
    alpha: Array


def revolve(canvas: Canvas, place: Placement, profile: Callable[[Array], Array]) -> dict[str, Array]:
    """Surface coordinates of an upright solid of revolution whose radius (in half widths) at height
    ``v`` (0 top, 1 base) is ``profile(v)``: which pixels show its side and its top, the angle
    around the axis and the true height of each side pixel."""
    across, down = canvas.turned(place.base_x, place.base_y, place.tilt)
    u = across / place.half_width
    v = 1.0 + down / place.height
    radius = profile(np.clip(v, 0.0, 1.0))
    ratio = np.clip(u / radius, -1.0, 1.0)
    depth = np.sqrt(1.0 - ratio**2)
    ellipse = place.elevation * place.half_width / place.height
    height = v - ellipse * radius * depth
    side = (np.abs(u) <= radius) & (height >= 0) & (height <= 1)
    top_radius = float(profile(np.zeros(1))[0])
    top_u, top_v = u / top_radius, v / (ellipse * top_radius)
    top = top_u**2 + top_v**2 <= 1
    return {"side": side & ~top, "top": top, "phi": np.arcsin(ratio), "height": height, "radius": radius,
            "u": u, "v": v, "top_u": top_u, "top_v": top_v}


def smoothstep(a: float, b: float, x: Array) -> Array:
    t = np.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def label_coordinates(surface: dict[str, Array], place: Placement, top: float) -> tuple[Array, Array]:
    """(across, down) on the unrolled side surface, in half widths, with 0 down at ``top``."""
    return surface["radius"] * surface["phi"], (surface["height"] - top) * place.height / place.half_width


def shade_side(body: Array, surface: dict[str, Array], light: Light, gloss: float, width: float) -> Array:
    diffuse, specular = cylinder_shading(surface["phi"], light, gloss, width)
    return body * diffuse[..., None] + specular[..., None]


def draw_bottle(canvas: Canvas, rng: np.random.Generator, place: Placement, light: Light, colour: Array) -> Layer:
    """A bottle of ``colour``: cap, neck, rounded shoulders and a body with a wrap-around label."""
    cap_end, neck_end = rng.uniform(0.05, 0.09), rng.uniform(0.18, 0.3)
    shoulder_end = neck_end + rng.uniform(0.1, 0.22)
    neck = rng.uniform(0.28, 0.42)
    cap = neck * rng.uniform(1.05, 1.2)

    def profile(v: Array) -> Array:
        r = np.where(v < cap_end, cap, neck)
        r = np.where(v >= neck_end, neck + (1 - neck) * smoothstep(neck_end, shoulder_end, v), r)
        return np.where(v > 0.96, 1 - 0.6 * (v - 0.96), r)

    surface = revolve(canvas, place, profile)
    body = np.broadcast_to(colour, surface["u"].shape + (3,)).copy()
    label_top = rng.uniform(shoulder_end + 0.03, 0.55)
    label_bottom = rng.uniform(max(label_top + 0.2, 0.75), 0.93)
    s, t = label_coordinates(surface, place, label_top)
    label_height = (label_bottom - label_top) * place.height / place.half_width
    on_label = (surface["height"] >= label_top) & (surface["height"] <= label_bottom)
    design = print_design(rng, s, t, product_colour(rng), 2.0, label_height)
    body[on_label] = design[on_label]
    cap_colour = product_colour(rng)
    on_cap = surface["height"] < cap_end
    ribs = 0.85 + 0.15 * np.sin(surface["phi"] * 24)
    body[on_cap] = cap_colour * ribs[on_cap][:, None]
    rgb = shade_side(body, surface, light, rng.uniform(0.35, 0.8), rng.uniform(0.12, 0.22))
    rgb[surface["top"]] = cap_colour * (0.9 + 0.1 * light.ambient)
    return Layer(rgb, (surface["side"] | surface["top"]).astype(np.float32))


def draw_can(canvas: Canvas, rng: np.random.Generator, place: Placement, light: Light, colour: Array) -> Layer:
    """A drink can printed on a ``colour`` ground, with a metal lid, tab and tapered rims."""
    lid = rng.uniform(0.84, 0.9)

    def profile(v: Array) -> Array:
        r = lid + (1 - lid) * smoothstep(0.0, 0.08, v)
        return np.where(v > 0.95, 1 - (1 - lid) * smoothstep(0.95, 1.0, v), r)

    surface = revolve(canvas, place, profile)
    metal = hsv(rng.uniform(0.5, 0.7), rng.uniform(0.0, 0.08), rng.uniform(0.7, 0.85))
    body = np.broadcast_to(metal, surface["u"].shape + (3,)).copy()
    print_top, print_bottom = 0.09, 0.94
    s, t = label_coordinates(surface, place, print_top)
    printed = (surface["height"] >= print_top) & (surface["height"] <= print_bottom)
    height = (print_bottom - print_top) * place.height / place.half_width
    design = print_design(rng, s, t, colour, 2.0, height)
    body[printed] = design[printed]
    rgb = shade_side(body, surface, light, rng.uniform(0.5, 0.9), rng.uniform(0.08, 0.15))
    rho = np.hypot(surface["top_u"], surface["top_v"])
    lid_shade = 0.75 + 0.25 * np.clip(1 - rho, 0, 1) + 0.15 * ((rho > 0.8) & (rho < 0.9))
    lid_rgb = metal[None, None, :] * lid_shade[..., None]
    tab = np.hypot(surface["top_u"] * 1.6, surface["top_v"] + 0.35) < 0.35
    lid_rgb[tab] = metal * 0.6
    rgb[surface["top"]] = lid_rgb[surface["top"]]
    return Layer(rgb, (surface["side"] | surface["top"]).astype(np.float32))


def draw_mug(canvas: Canvas, rng: np.random.Generator, place: Placement, light: Light, colour: Array) -> Layer:
    """A glazed mug of ``colour``, often printed, with its opening (sometimes coffee) and a handle."""
    taper = rng.uniform(0.0, 0.12)

    def profile(v: Array) -> Array:
        r = 1.0 - taper * v
        return np.where(v > 0.95, r - 0.5 * (v - 0.95), r)

    surface = revolve(canvas, place, profile)
    glaze = colour
    body = np.broadcast_to(glaze, surface["u"].shape + (3,)).copy()
    if rng.random() < 0.7:
        print_top = rng.uniform(0.1, 0.35)
        s, t = label_coordinates(surface, place, print_top)
        area = (surface["height"] >= print_top) & (surface["height"] <= 0.9)
        design = print_design(rng, s, t, glaze, 1.6, (0.9 - print_top) * place.height / place.half_width)
        body[area] = design[area]
    rgb = shade_side(body, surface, light, rng.uniform(0.25, 0.55), rng.uniform(0.15, 0.25))
    rho = np.hypot(surface["top_u"], surface["top_v"])
    inside = glaze * (0.35 + 0.35 * smoothstep(-0.9, 0.6, surface["top_v"]))[..., None]
    if rng.random() < 0.35:
        coffee = hsv(rng.uniform(0.05, 0.09), rng.uniform(0.5, 0.8), rng.uniform(0.15, 0.35))
        inside = np.where(((surface["top_v"] > -0.55) & (rho < 0.86))[..., None], coffee, inside)
    rim = np.where((rho > 0.86)[..., None], glaze * 0.95, inside)
    rgb[surface["top"]] = rim[surface["top"]]

    # The handle: an elliptic ring beside the body, shaded as a tube.
    side = 1.0 if rng.random() < 0.5 else -1.0
    across, down = surface["u"] * place.half_width, (surface["v"] - 1) * place.height
    centre_x, centre_y = side * place.half_width * rng.uniform(1.0, 1.1), -place.height * rng.uniform(0.45, 0.55)
    outer = np.array([rng.uniform(0.4, 0.5) * place.half_width, rng.uniform(0.28, 0.36) * place.height])
    thickness = rng.uniform(0.35, 0.5)
    ring = np.hypot((across - centre_x) / outer[0], (down - centre_y) / outer[1])
    handle = (ring <= 1) & (ring >= 1 - thickness) & (across * side > 0) & ~(surface["side"] | surface["top"])
    tube = np.sqrt(np.clip(1 - ((ring - (1 - thickness / 2)) / (thickness / 2)) ** 2, 0, 1))
    handle_light = light.ambient + (1 - light.ambient) * (0.4 + 0.6 * tube) * (0.7 + 0.3 * side * light.side)
    rgb[handle] = (glaze * handle_light[..., None])[handle]
    return Layer(rgb, (surface["side"] | surface["top"] | handle).astype(np.float32))


def draw_carton(canvas: Canvas, rng: np.random.Generator, place: Placement, light: Light, colour: Array) -> Layer:
    """A gable-top carton seen a little from one side and above: front face, side face with its
    triangular gable, the roof panel sloping back to the ridge, and the sealed fin on the ridge."""
    across, down = canvas.turned(place.base_x, place.base_y, place.tilt)
    side = 1.0 if rng.random() < 0.5 else -1.0
    w, v = side * across / place.half_width, 1.0 + down / place.height  # w: the side face is at w > fold
    side_width = 2 * rng.uniform(0.22, 0.35)
    fold = 1 - side_width
    depth = np.clip((w - fold) / side_width, 0, 1)  # 0 at the fold, 1 at the back edge

    def rise(d):  # receding edges climb in the picture because the camera looks down a little
        return 1.5 * place.elevation * side_width * place.half_width / place.height * d

    fin_height, gable_height = rng.uniform(0.03, 0.06), rng.uniform(0.1, 0.16)
    ridge = fin_height
    roof_base = ridge + rise(0.5) + gable_height
    in_front, in_side = (w >= -1) & (w <= fold), (w > fold) & (w <= 1)
    front = in_front & (v >= roof_base) & (v <= 1)
    side_face = in_side & (v >= roof_base - rise(depth)) & (v <= 1 - rise(depth))
    climb = np.clip((roof_base - v) / (roof_base - ridge), 0, 1)  # 0 at the front edge, 1 at the ridge
    roof = (v >= ridge) & (v < roof_base) & (w >= -1 + side_width / 2 * climb) & (w <= fold + side_width / 2 * climb)
    gable_base = roof_base - rise(depth)
    gable = in_side & (v < gable_base) & (v >= ridge + (gable_base - ridge) * np.abs(2 * depth - 1))
    fin = (v >= ridge - fin_height) & (v < ridge) & (w >= -1 + side_width / 2) & (w <= fold + side_width / 2)

    ground = colour
    unit = place.height / place.half_width
    design = print_design(rng, w - (fold - 1) / 2, (v - roof_base) * unit, ground, 1 + fold, (1 - roof_base) * unit)
    rgb = np.broadcast_to(ground, w.shape + (3,)).copy()
    rgb[front] = design[front]
    ink = hsv(0, 0, 0.15 if ground.mean() > 0.45 else 0.9)
    small_text = ((v * unit * 12) % 1 < 0.4) & (v > 0.45) & (v < 0.85) & (depth > 0.15) & (depth < 0.85)
    rgb[side_face & small_text] = ink

    def face_light(normal: float) -> float:
        return light.ambient + (1 - light.ambient) * max(math.cos(light.azimuth - normal), 0.0)

    brightness = np.ones_like(w)
    brightness[front] = face_light(0.0)
    brightness[fin] = face_light(0.0) * 0.95
    brightness[side_face] = face_light(side * 1.2)
    brightness[roof] = face_light(0.0) * 1.12
    brightness[gable] = face_light(side * 1.2) * 0.92
    sheen = rng.uniform(0.0, 0.15) * np.exp(-(((side * w - light.side * 0.5) / 0.5) ** 2))
    rgb = rgb * brightness[..., None] + (sheen * front)[..., None]
    rgb[(np.abs(w - fold) < 0.025) & (front | side_face)] *= 1.15  # the folded edge catches light
    return Layer(rgb, (front | side_face | roof | gable | fin).astype(np.float32))


@dataclasses.dataclass(frozen=True)
class ProductKind:
    """How to draw a class and its proportions: height relative to the other classes, half width
    as a share of height, and camera elevation (how much of a round top is seen)."""

    draw: Callable[[Canvas, np.random.Generator, Placement, Light, Array], Layer]  # colour: the main one
    size: float
    half_width: tuple[float, float]
    elevation: tuple[float, float]
    reach: float = 1.0  # how far the outline extends beside the body, in half widths


PRODUCTS = {
    "bottle": ProductKind(draw_bottle, 1.0, (0.13, 0.19), (0.08, 0.2)),
    "can": ProductKind(draw_can, 0.8, (0.3, 0.38), (0.14, 0.26)),
    "carton": ProductKind(draw_carton, 0.95, (0.2, 0.27), (0.12, 0.25)),
    "mug": ProductKind(draw_mug, 0.76, (0.4, 0.52), (0.2, 0.35), reach=1.9),
}


# backgrounds -------------------------------------------------------------------------------------

def wood(canvas: Canvas, rng: np.random.Generator) -> Array:
    """Planks with warped grain rings, fine streaks and dark seams."""
    side = canvas.side
    vertical = rng.random() < 0.35
    along, across = (canvas.y, canvas.x) if vertical else (canvas.x, canvas.y)
    plank = side * rng.uniform(0.25, 0.6)
    across_planks = (across + rng.uniform(0, plank)) / plank
    index = np.floor(across_planks).astype(int) % 16
    tones, phases = rng.uniform(-0.12, 0.12, 16), rng.uniform(0, 2 * math.pi, 16)
    warp = fractal_noise(rng, side, 3) * side * rng.uniform(0.05, 0.2) + along * rng.uniform(-0.1, 0.1)
    period = side * rng.uniform(0.02, 0.05)
    grain = (0.5 + 0.5 * np.sin((across + warp) / period + phases[index])) ** rng.uniform(1.5, 3.0)
    streak_cells = (100, 5) if not vertical else (5, 100)
    streaks = smooth_noise(rng, side, *streak_cells)
    light = hsv(rng.uniform(0.05, 0.1), rng.uniform(0.3, 0.65), rng.uniform(0.45, 0.9))
    rgb = mix(light, light * 0.55, np.clip(0.55 * grain + 0.35 * streaks, 0, 1)) * (1 + tones[index])[..., None]
    seam = np.abs(across_planks % 1 - 0.5) * plank > plank / 2 - 1.2
    rgb[seam] *= 0.55
    return rgb


def fabric(canvas: Canvas, rng: np.random.Generator) -> Array:
    """A woven cloth with threads, folds and sometimes a stripe or check pattern."""
    side = canvas.side
    a, b = canvas.turned(side / 2, side / 2, rng.uniform(-20, 20))
    period = rng.uniform(5.0, 9.0)
    weave = np.sin(2 * math.pi * a / period) * np.sin(2 * math.pi * b / period)
    threads = smooth_noise(rng, side, side // 6, side // 40) - 0.5
    folds = fractal_noise(rng, side, 3)
    cloth = hsv(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.3, 0.85))
    rgb = np.broadcast_to(cloth, a.shape + (3,)).copy()
    if rng.random() < 0.35:
        band = side * rng.uniform(0.08, 0.2)
        stripes = np.sin(2 * math.pi * a / band) > 0.5
        if rng.random() < 0.5:
            stripes |= np.sin(2 * math.pi * b / band) > 0.5
        rgb[stripes] = hsv(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.3, 0.85))
    return rgb * (1 + 0.08 * weave + 0.1 * threads + 0.45 * (folds - 0.5))[..., None]


def wall_and_table(canvas: Canvas, rng: np.random.Generator, edge: float) -> Array:
    """A painted wall meeting a table top at height ``edge`` (pixels from the top)."""
    side = canvas.side
    paint = hsv(rng.random(), rng.uniform(0.03, 0.3), rng.uniform(0.55, 0.95))
    roller = 1 + 0.04 * (smooth_noise(rng, side, side // 3) - 0.5) + 0.12 * (fractal_noise(rng, side, 2) - 0.5)
    near_table = 1 - 0.25 * np.exp(-np.clip(edge - canvas.y, 0, None) / (0.05 * side))
    wall = paint * (roller * near_table)[..., None]
    if rng.random() < 0.5:
        table = wood(canvas, rng)
    else:
        top = hsv(rng.random(), rng.uniform(0.0, 0.4), rng.uniform(0.3, 0.9))
        table = top * (1 + 0.05 * (smooth_noise(rng, side, side // 4) - 0.5))[..., None]
    depth = np.clip((canvas.y - edge) / max(side - edge, 1.0), 0, 1)
    table = table * (0.85 + 0.25 * depth)[..., None]
    rgb = np.where((canvas.y >= edge)[..., None], table, wall)
    rgb[np.abs(canvas.y - edge) < 1.0] *= 0.6
    return rgb


# clutter -----------------------------------------------------------------------------------------

def draw_pen(canvas: Canvas, rng: np.random.Generator, light: Light) -> Layer:
    """A ballpoint pen lying on the table: a shaded barrel and a metal cone tip."""
    side = canvas.side
    length, radius = side * rng.uniform(0.3, 0.6), side * rng.uniform(0.012, 0.02)
    cx, cy, angle = rng.uniform(0, side), rng.uniform(0, side), rng.uniform(0, math.pi)
    direction = np.array([math.cos(angle), math.sin(angle)])
    back = np.array([cx, cy]) - direction * length / 2
    tip_start = back + direction * length * rng.uniform(0.88, 0.93)
    barrel, across = canvas.capsule(tuple(back), tuple(tip_start), radius)
    along = (canvas.x - tip_start[0]) * direction[0] + (canvas.y - tip_start[1]) * direction[1]
    cone_length = length / 2 + (np.array([cx, cy]) - tip_start) @ direction
    tip = (along > 0) & (along < cone_length) & (np.abs(across) <= 1 - along / cone_length) & ~barrel
    dark = hsv(float(rng.choice([0.62, 0.0])), rng.uniform(0.5, 0.9), rng.uniform(0.1, 0.5))
    colour = product_colour(rng) if rng.random() < 0.5 else dark
    roundness = np.sqrt(1 - across**2)
    shade = light.ambient + (1 - light.ambient) * (0.3 + 0.7 * roundness)
    rgb = colour * shade[..., None] + (0.5 * np.exp(-(((across + 0.4) / 0.25) ** 2)))[..., None]
    rgb[tip] = hsv(0, 0, 0.7) * shade[tip][:, None]
    return Layer(rgb, (barrel | tip).astype(np.float32))


def draw_note(canvas: Canvas, rng: np.random.Generator, light: Light) -> Layer:
    """A sticky note or paper slip, slightly curled, ruled or scribbled on."""
    side = canvas.side
    a, b = canvas.turned(rng.uniform(0, side), rng.uniform(0, side), rng.uniform(-45, 45))
    w, h = side * rng.uniform(0.08, 0.18), side * rng.uniform(0.08, 0.2)
    sheet = (np.abs(a) <= w) & (np.abs(b) <= h)
    paper = [hsv(0.15, rng.uniform(0.3, 0.6), 0.97), hsv(0, 0, 0.95), hsv(0.92, 0.25, 0.97), hsv(0.55, 0.2, 0.95)]
    colour = paper[rng.integers(len(paper))]
    curl = 1 - 0.12 * ((a / w + 1) / 2) ** 2 * rng.uniform(0, 1)
    rgb = colour * curl[..., None]
    spacing = rng.uniform(0.1, 0.2) * h
    ruled = ((b % spacing) < 1.2) & (np.abs(a) < w * 0.85) & (b > -h * 0.7)
    if rng.random() < 0.5:
        ruled &= np.sin(a / spacing * 2.5 + np.floor(b / spacing) * 1.7) > -0.3
        rgb[ruled] = hsv(rng.choice([0.62, 0.0]), 0.6, 0.3)
    else:
        rgb[ruled] = colour * 0.8
    return Layer(rgb, sheet.astype(np.float32))


def draw_coin(canvas: Canvas, rng: np.random.Generator, light: Light) -> Layer:
    """A gold, silver or copper coin lying flat, lit from the side, with a raised rim."""
    side = canvas.side
    radius, squash = side * rng.uniform(0.035, 0.065), rng.uniform(0.6, 1.0)
    cx, cy = rng.uniform(0, side), rng.uniform(0, side)
    a, b = (canvas.x - cx) / radius, (canvas.y - cy) / (radius * squash)
    rho = np.hypot(a, b)
    metals = [hsv(0.12, 0.55, 0.85), hsv(0.6, 0.03, 0.8), hsv(0.06, 0.6, 0.7)]
    metal = metals[rng.integers(len(metals))]
    relief = 0.85 + 0.15 * smooth_noise(rng, side, side // 4)
    shade = (0.75 + 0.35 * (-(a * light.side) - b * 0.3) / 2) * relief
    shade = np.where((rho > 0.82) & (rho <= 1), shade * 1.15, shade)
    return Layer(metal * shade[..., None], (rho <= 1).astype(np.float32))


def draw_hand(canvas: Canvas, rng: np.random.Generator, light: Light) -> Layer:
    """A hand reaching in from one edge of the frame: wrist, palm, fingers and thumb."""
    side = canvas.side
    scale = side * rng.uniform(0.8, 1.3)
    inward = rng.choice([0.0, 0.5, 1.0, 1.5], p=[0.3, 0.1, 0.3, 0.3]) * math.pi + rng.uniform(-0.5, 0.5)
    direction = np.array([math.cos(inward), math.sin(inward)])
    normal = np.array([-direction[1], direction[0]])
    # Start from the frame centre, walk back out past the edge the hand comes from.
    along_edge = rng.uniform(-0.3, 0.3) * side
    reach = rng.uniform(0.05, 0.2) * scale
    exit_distance = side / 2 / max(abs(direction[0]), abs(direction[1]))
    palm = np.array([side / 2, side / 2]) + normal * along_edge - direction * (exit_distance - reach)
    mask = np.zeros((side, side), bool)
    wrist, _ = canvas.capsule(tuple(palm - direction * scale), tuple(palm), 0.11 * scale)
    mask |= wrist
    a, b = canvas.turned(palm[0], palm[1], math.degrees(inward) - 90)
    mask |= np.hypot(a / (0.13 * scale), b / (0.15 * scale)) <= 1
    curl = rng.uniform(0.35, 1.0)
    for k, offset in enumerate((-1.5, -0.5, 0.5, 1.5)):
        length = (0.22, 0.26, 0.25, 0.19)[k] * scale * curl
        root = palm + direction * 0.11 * scale + normal * offset * 0.055 * scale
        spread = direction + normal * offset * 0.06
        finger, _ = canvas.capsule(tuple(root), tuple(root + spread / np.linalg.norm(spread) * length), 0.028 * scale)
        mask |= finger
    thumb_side = 1.0 if rng.random() < 0.5 else -1.0
    thumb_root = palm + normal * thumb_side * 0.11 * scale
    thumb_dir = direction * 0.6 + normal * thumb_side * 0.8
    thumb, _ = canvas.capsule(tuple(thumb_root), tuple(thumb_root + thumb_dir * 0.17 * scale), 0.032 * scale)
    mask |= thumb
    skin = hsv(rng.uniform(0.03, 0.09), rng.uniform(0.25, 0.6), rng.uniform(0.3, 0.95))
    thickness = blur(mask.astype(np.float32), 0.03 * scale)
    creases = blur(mask.astype(np.float32), 0.006 * scale)
    shade = (0.55 + 0.45 * thickness) * (0.8 + 0.2 * creases) * (1 - 0.15 * light.side * (canvas.x / side - 0.5))
    return Layer(skin * shade[..., None], mask.astype(np.float32))


CLUTTER = {"pen": draw_pen, "note": draw_note, "coin": draw_coin}


# the photo ---------------------------------------------------------------------------------------

def drop_shadow(canvas: Canvas, alpha: Array, light: Light, distance: float, softness: float, strength: float) -> None:
    canvas.darken(strength * blur(shift(alpha, -light.side * distance, distance * 0.6), softness))


def place_product(rng: np.random.Generator, kind: str, side: int, level: Difficulty) -> Placement:
    product = PRODUCTS[kind]
    height = side * product.size * rng.uniform(*level.product_height)
    half_width = height * rng.uniform(*product.half_width)
    tilt = rng.uniform(-level.tilt, level.tilt)
    reach = half_width * product.reach
    slack_x = max(side / 2 - reach * level.inside, 0.0)
    slack_y = max(side / 2 - height / 2 * level.inside, 0.0)
    centre_x = side / 2 + np.clip(rng.uniform(-level.offset, level.offset) * side, -slack_x, slack_x)
    centre_y = side / 2 + np.clip(rng.uniform(-level.offset, level.offset) * side, -slack_y, slack_y)
    return Placement(float(centre_x), float(centre_y + height / 2), float(height), float(half_width),
                     float(tilt), float(rng.uniform(*product.elevation)))


def draw_background(canvas: Canvas, rng: np.random.Generator, place: Placement, level: Difficulty) -> None:
    """Wood, cloth, or a wall behind a table whose top reaches under the product's base."""
    side = canvas.side
    scene = rng.choice(["wood", "fabric", "wall"])
    if scene == "wall":
        edge = rng.uniform(0.25 * side, max(place.base_y - 0.1 * side, 0.3 * side))
        canvas.rgb = wall_and_table(canvas, rng, edge)
    else:
        canvas.rgb = wood(canvas, rng) if scene == "wood" else fabric(canvas, rng)


def draw_product_shadows(canvas: Canvas, rng: np.random.Generator, place: Placement, light: Light, alpha: Array) -> None:
    """A dark soft ellipse where the base touches the table and a fainter shadow away from the light."""
    across, down = canvas.turned(place.base_x, place.base_y, place.tilt)
    footprint = np.hypot(across / (place.half_width * 1.15),
                         down / (place.half_width * place.elevation + canvas.side * 0.015)) <= 1
    canvas.darken(rng.uniform(0.4, 0.6) * blur(footprint.astype(np.float32), place.half_width * 0.15))
    drop_shadow(canvas, alpha, light, place.half_width * rng.uniform(0.3, 0.7), place.half_width * 0.25,
                rng.uniform(0.2, 0.35))


def render_photo(kind: str, rng: np.random.Generator, size: int, level: Difficulty) -> tuple[Image.Image, Image.Image]:
    """One photo of a ``kind`` product and its mask, both ``size`` x ``size``."""
    side = size * SUPERSAMPLE
    canvas = Canvas(side)
    light = Light(azimuth=rng.uniform(-1.0, 1.0), ambient=rng.uniform(0.3, 0.5), strength=rng.uniform(0.1, 0.3))
    place = place_product(rng, kind, side, level)
    draw_background(canvas, rng, place, level)

    names = rng.choice(list(CLUTTER), rng.integers(level.clutter[0], level.clutter[1] + 1))
    clutter = [CLUTTER[name](canvas, rng, light) for name in names]
    in_front = clutter.pop() if clutter and rng.random() < level.occlusion else None
    for item in clutter:
        drop_shadow(canvas, item.alpha, light, side * 0.01, side * 0.01, 0.35)
        canvas.paint(item.rgb, item.alpha)

    colour = product_colour(rng)
    if rng.random() < level.camouflage:
        colour = np.clip(canvas.rgb.reshape(-1, 3).mean(axis=0) * rng.uniform(0.85, 1.15, 3), 0, 1).astype(np.float32)
    product = PRODUCTS[kind].draw(canvas, rng, place, light, colour)
    draw_product_shadows(canvas, rng, place, light, product.alpha)
    canvas.paint(product.rgb, product.alpha)

    hand = draw_hand(canvas, rng, light) if rng.random() < level.hand else None
    covered = np.zeros_like(product.alpha)
    for item in (in_front, hand):
        if item is None:
            continue
        now_covered = np.maximum(covered, item.alpha)
        if (product.alpha * (1 - now_covered)).sum() < level.min_visible * product.alpha.sum():
            continue  # would hide too much of the product: leave this one out
        drop_shadow(canvas, item.alpha, light, side * 0.012, side * 0.012, 0.3)
        canvas.paint(item.rgb, item.alpha)
        covered = now_covered

    return finish(canvas, rng, light, level, size), mask_image(product.alpha * (1 - covered))


def finish(canvas: Canvas, rng: np.random.Generator, light: Light, level: Difficulty, size: int) -> Image.Image:
    """Lighting gradient, vignetting, white balance and exposure; then reduce, defocus, add noise."""
    side = canvas.side
    across = (canvas.x / side - 0.5) * light.side - (canvas.y / side - 0.5) * 0.3
    gradient = 1 + light.strength * across * 2
    radius2 = ((canvas.x / side - 0.5) ** 2 + (canvas.y / side - 0.5) ** 2) * 2
    vignette = 1 - rng.uniform(0.15, 0.4) * radius2**1.5
    balance = 1 + np.array([1, 0, -1], np.float32) * rng.uniform(-0.05, 0.08)
    rgb = canvas.rgb * (gradient * vignette)[..., None] * balance * rng.uniform(0.85, 1.15)
    rgb = (1 - np.exp(-1.6 * np.clip(rgb, 0, None))) / (1 - math.exp(-1.6))  # soft highlight roll-off
    image = Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)).reduce(SUPERSAMPLE)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(*level.blur)))
    pixels = np.asarray(image, np.float32)
    sigma = rng.uniform(*level.noise)
    grain = rng.normal(0, sigma, pixels.shape[:2])[..., None] + rng.normal(0, sigma * 0.5, pixels.shape)
    pixels = pixels + grain * np.sqrt(0.3 + pixels / 255)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def mask_image(alpha: Array) -> Image.Image:
    """The product's visible area at output size: 255 where at least half of a pixel is product."""
    reduced = Image.fromarray(alpha.astype(np.float32)).reduce(SUPERSAMPLE)
    return Image.fromarray(np.where(np.asarray(reduced) >= 0.5, 255, 0).astype(np.uint8), mode="L")


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# files -------------------------------------------------------------------------------------------

def check_output(folder: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder unless ``overwrite``; with it, delete the photos an earlier run made."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder; choose another path")
    if any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} exists and is not empty; pass --overwrite to replace its photos, or choose another folder")
    for name in CLASSES:
        for old in (folder / name).glob(f"{name}_*.*"):
            if old.suffix in (".jpg", ".png"):
                old.unlink()


def photo_and_mask(kind: str, index: int, seed: int, difficulty: str, size: int) -> tuple[bytes, Image.Image]:
    """Photo ``index`` of class ``kind`` as JPEG bytes, and its mask; depends on these arguments only."""
    level = DIFFICULTIES[difficulty]
    rng = np.random.default_rng([seed, list(DIFFICULTIES).index(difficulty), CLASSES.index(kind), index])
    photo, mask = render_photo(kind, rng, size, level)
    return jpeg_bytes(photo, int(rng.integers(level.jpeg_quality[0], level.jpeg_quality[1] + 1))), mask


def generate(out: Path, masks: Path, per_class: int, size: int, seed: int, difficulty: str,
             overwrite: bool = False) -> dict[str, int]:
    """Write ``per_class`` photos and masks of every class; returns the bytes written per class.

    Photo ``i`` of class ``c`` depends only on (seed, difficulty, c, i).
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {list(DIFFICULTIES)}, got {difficulty!r}")
    if per_class < 1 or size < 16:
        raise ValueError(f"need --per-class >= 1 and --size >= 16, got {per_class} and {size}")
    for folder in (out, masks):
        check_output(folder, overwrite)
    written = {}
    for kind in CLASSES:
        (out / kind).mkdir(parents=True, exist_ok=True)
        (masks / kind).mkdir(parents=True, exist_ok=True)
        written[kind] = 0
        for i in range(per_class):
            data, mask = photo_and_mask(kind, i, seed, difficulty, size)
            (out / kind / f"{kind}_{i:03d}.jpg").write_bytes(data)
            mask.save(masks / kind / f"{kind}_{i:03d}.png", optimize=True)
            written[kind] += len(data)
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make_sample_photos.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="difficulty:\n"
               "  standard  the product fills much of the frame near its centre, tilted up to 3 degrees,\n"
               "            1-2 pieces of clutter, now and then a pen, note or hand over part of it\n"
               "            (96 px, 300 per class by default: the bundled sample)\n"
               "  hard      the product from a fifth of the frame to nearly all of it, anywhere, partly\n"
               "            cut off by the frame edge, tilted up to 20 degrees, sometimes coloured like\n"
               "            the background, 3-7 pieces of clutter, more occlusion, blur and noise\n"
               "            (64 px, 300 per class by default: a benchmark set)\n"
               "  severe    harder still: smaller products (a fifth to three quarters of the frame),\n"
               "            tilted up to 35 degrees, more often camouflaged, cut off or occluded,\n"
               "            5-9 pieces of clutter, more blur, noise and JPEG loss\n"
               "            (64 px, 300 per class by default: a check of how results hold up)\n\n"
               "examples:\n"
               "  python examples/make_sample_photos.py --out examples/photos --masks examples/masks\n"
               "  python examples/make_sample_photos.py --out /tmp/hard/photos --difficulty hard\n"
               "  python examples/make_sample_photos.py --out /tmp/big/photos --per-class 500 --seed 7\n",
    )
    parser.add_argument("--out", type=Path, default=SCRIPT_DIR / "photos",
                        help="photo folder; one sub-folder per class is made in it (default: photos/ beside this script)")
    parser.add_argument("--masks", type=Path, default=None,
                        help="mask folder, same layout (default: masks/ beside the photo folder)")
    parser.add_argument("--difficulty", choices=list(DIFFICULTIES), default="standard",
                        help="how varied and cluttered the photos are (default: standard)")
    parser.add_argument("--per-class", type=int, default=None,
                        help="photos per class (default: 300 for either difficulty)")
    parser.add_argument("--size", type=int, default=None, help="side of the square photos in pixels (default: 96 standard, 64 hard and severe)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same photos (default: 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the photos of an earlier run in non-empty output folders")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = DIFFICULTIES[args.difficulty]
    masks = args.masks if args.masks is not None else args.out.parent / "masks"
    per_class = args.per_class if args.per_class is not None else level.per_class
    size = args.size if args.size is not None else level.size
    try:
        written = generate(args.out, masks, per_class, size, args.seed, args.difficulty, args.overwrite)
    except (FileExistsError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    total = sum(written.values())
    print(f"wrote {per_class * len(CLASSES)} photos of {size} px ({total / 1e6:.2f} MB) to {args.out}, masks to {masks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
