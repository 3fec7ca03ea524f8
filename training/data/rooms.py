"""A procedural indoor room renderer: a back wall and a floor in perspective, furniture built from parts (a sink
with its tap, a table with things on it, chairs, a bed with pillow and blanket, windows, doors, lamps, bookshelves,
a television) in varied colours, textures, sizes and places, distractors (plants, pictures, clocks, rugs, cabinets,
small objects), shadows and uneven lighting; with exact per-pixel labels and instances.

    room = draw_room(random.Random(0))
    room.image      [H, W, 3] uint8 RGB
    room.labels     [H, W] int32, indices into LABELS (0 unlabelled, 1 wall, 2 floor, then TARGETS, DISTRACTORS)
    room.instances  [H, W] uint8, one id per placed object (0: wall, floor, none)
    room.masks      target name → [H, W] bool, its visible pixels (every target present is in here)

Masks are what stays visible after everything in front is drawn, so occlusion is exact."""
from __future__ import annotations

import colorsys
import random
from dataclasses import dataclass, field

import cv2
import numpy as np

# target → (NYU40 id, what it is for: questions that need reasoning to answer)
TARGETS = {
    "sink": (34, ("Where can I wash my hands?", "Where can I wash the dishes?", "Where can I get some water?")),
    "table": (7, ("Where can I put my cup down?", "Where can I eat my dinner?", "Where can I put a plate?")),
    "chair": (5, ("Where can I sit?", "Where can I sit down for a while?", "What can I sit on?")),
    "bed": (4, ("Where can I sleep?", "Where can I lie down?", "Where can I take a nap?")),
    "window": (9, ("Where can I look outside?", "Where does the daylight come in?", "Where can I let fresh air in?")),
    "door": (8, ("How can I leave the room?", "Where is the way out?", "Where can I go out of this room?")),
    "lamp": (35, ("What can I turn on to get more light?", "What lights up the room?", "What gives light at night?")),
    "bookshelf": (10, ("Where can I find something to read?", "Where are the books kept?",
                       "Where can I put a book away?")),
    "television": (25, ("Where can I watch the news?", "What can I watch a film on?", "Where can I watch TV?")),
}
DISTRACTORS = ("plant", "picture", "clock", "rug", "cabinet", "object")
LABELS = ("unlabelled", "wall", "floor", *TARGETS, *DISTRACTORS)
NYU40 = {"wall": 1, "floor": 2, **{name: nyu for name, (nyu, _) in TARGETS.items()},
         "plant": 40, "picture": 11, "clock": 40, "rug": 20, "cabinet": 3, "object": 40}
WALL_COLOURS = {"white": (236, 234, 228), "grey": (150, 150, 152), "blue": (120, 155, 205),
                "green": (135, 180, 130), "yellow": (232, 212, 120), "pink": (225, 160, 175),
                "beige": (212, 190, 155)}
ON_WALL = ("window", "door", "picture", "clock")


@dataclass
class Room:
    image: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    masks: dict[str, np.ndarray]
    wall_colour: str
    distractors: list[str] = field(default_factory=list)

    @property
    def floor(self) -> np.ndarray:
        return self.labels == LABELS.index("floor")


def random_colour(rng: random.Random, sat=(0.2, 0.85), val=(0.25, 0.95)) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return np.array([r, g, b], np.float32) * 255


def wood(rng: random.Random) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.uniform(0.05, 0.11), rng.uniform(0.4, 0.75), rng.uniform(0.3, 0.8)),
                    np.float32) * 255


class Canvas:
    """The image being drawn and its label / instance maps; every ``fill`` paints all three."""

    def __init__(self, rng: random.Random, height: int, width: int):
        self.rng, self.h, self.w = rng, height, width
        self.image = np.zeros((height, width, 3), np.float32)
        self.labels = np.zeros((height, width), np.int32)
        self.instances = np.zeros((height, width), np.uint8)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.yy, self.xx = yy, xx
        self.noise = cv2.GaussianBlur(np.float32(np.random.default_rng(rng.getrandbits(32)).normal(
            0, 1, (height, width))), (0, 0), 1.2)

    def shape_mask(self, draw) -> np.ndarray:
        mask = np.zeros((self.h, self.w), np.uint8)
        draw(mask)
        return mask.astype(bool)

    def fill(self, mask: np.ndarray, colour, label: str | None, instance: int = 0, texture: str = "flat"):
        colour = np.asarray(colour, np.float32)
        shade = 1.0 + 0.03 * self.noise[mask]
        if texture == "grain":
            phase = self.rng.random() * 6.3
            shade = shade + 0.1 * np.sin(self.yy[mask] * self.rng.uniform(0.6, 1.4) + 3 * self.noise[mask] + phase)
        elif texture == "stripes":
            period = self.rng.uniform(4, 9)
            shade = shade + 0.12 * (np.sin(self.xx[mask] * 6.283 / period) > 0)
        elif texture == "checks":
            s = self.rng.randint(4, 8)
            shade = shade + 0.12 * (((self.xx[mask] // s) + (self.yy[mask] // s)) % 2)
        elif texture == "speckle":
            shade = shade + 0.12 * self.noise[mask]
        self.image[mask] = np.clip(colour[None] * shade[:, None], 0, 255)
        if label is not None:
            self.labels[mask] = LABELS.index(label)
            self.instances[mask] = instance

    def rect(self, x0, y0, x1, y1, colour, label, instance=0, texture="flat"):
        pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)
        self.poly(pts, colour, label, instance, texture)

    def poly(self, pts, colour, label, instance=0, texture="flat"):
        pts = np.round(np.asarray(pts, np.float32) * 4).astype(np.int32)
        self.fill(self.shape_mask(lambda m: cv2.fillPoly(m, [pts], 1, cv2.LINE_8, 2)), colour, label, instance,
                  texture)

    def ellipse(self, cx, cy, ax, ay, colour, label, instance=0, texture="flat", angle=0.0):
        centre, axes = (int(round(cx * 4)), int(round(cy * 4))), (max(1, int(ax * 4)), max(1, int(ay * 4)))
        self.fill(self.shape_mask(lambda m: cv2.ellipse(m, centre, axes, angle, 0, 360, 1, -1, cv2.LINE_8, 2)),
                  colour, label, instance, texture)

    def line(self, x0, y0, x1, y1, thickness, colour, label, instance=0):
        p0, p1 = (int(round(x0 * 4)), int(round(y0 * 4))), (int(round(x1 * 4)), int(round(y1 * 4)))
        self.fill(self.shape_mask(lambda m: cv2.line(m, p0, p1, 1, max(1, int(thickness)), cv2.LINE_8, 2)),
                  colour, label, instance)

    def shadow(self, cx, cy, ax, ay, strength):
        mask = self.shape_mask(lambda m: cv2.ellipse(m, (int(cx), int(cy)), (max(1, int(ax)), max(1, int(ay))),
                                                     0, 0, 360, 1, -1))
        self.image[mask] *= 1 - strength


# --- the objects: each drawn around its footprint (x centre, base y) at a scale s (pixels per unit) ---------------

def draw_sink(c: Canvas, rng, x, base, s, inst):
    w, h = s * rng.uniform(0.9, 1.3), s * rng.uniform(0.85, 1.05)
    body = random_colour(rng, val=(0.5, 0.95))
    c.rect(x - w / 2, base - h, x + w / 2, base, body, "sink", inst, rng.choice(("flat", "grain")))
    c.rect(x - w / 2 + 2, base - h * 0.7, x - 1, base - 3, body * 0.85, "sink", inst)  # cabinet doors
    c.rect(x + 1, base - h * 0.7, x + w / 2 - 2, base - 3, body * 0.85, "sink", inst)
    top = base - h
    c.rect(x - w / 2 - 2, top - s * 0.08, x + w / 2 + 2, top, body * 1.1, "sink", inst)
    basin = np.array(rng.choice([(235, 235, 235), (200, 205, 210), (225, 220, 205)]), np.float32)
    c.ellipse(x, top - s * 0.08, w * 0.36, s * 0.09, basin, "sink", inst)
    c.ellipse(x, top - s * 0.07, w * 0.26, s * 0.05, basin * 0.7, "sink", inst)
    metal = np.array((175, 178, 185), np.float32) * rng.uniform(0.8, 1.1)
    c.line(x, top - s * 0.12, x, top - s * 0.36, max(2, s * 0.07), metal, "sink", inst)  # the tap
    c.line(x, top - s * 0.36, x + w * 0.18, top - s * 0.33, max(2, s * 0.06), metal, "sink", inst)
    c.ellipse(x - w * 0.12, top - s * 0.16, s * 0.05, s * 0.04, metal, "sink", inst)


def draw_table(c: Canvas, rng, x, base, s, inst):
    w, h, depth = s * rng.uniform(1.4, 2.2), s * rng.uniform(0.65, 0.85), s * rng.uniform(0.15, 0.3)
    colour, texture = (wood(rng), "grain") if rng.random() < 0.6 else (random_colour(rng), "flat")
    leg = max(2, s * 0.08)
    for lx in (x - w / 2 + leg, x + w / 2 - leg * 2):
        c.rect(lx + depth * 0.4, base - h - depth * 0.5, lx + leg + depth * 0.4, base - depth * 0.6, colour * 0.7,
               "table", inst)  # back legs
    top = base - h
    c.poly([[x - w / 2, top], [x + w / 2, top], [x + w / 2 + depth * 0.5, top - depth],
            [x - w / 2 + depth * 0.5, top - depth]], colour * 1.05, "table", inst, texture)
    c.rect(x - w / 2, top, x + w / 2, top + s * 0.08, colour * 0.8, "table", inst)
    for lx in (x - w / 2 + 1, x + w / 2 - leg - 1):
        c.rect(lx, top, lx + leg, base, colour * 0.75, "table", inst)
    for _ in range(rng.randint(1, 3)):  # things on it: a cup, a bowl, a book
        ox, kind, col = x + rng.uniform(-0.35, 0.35) * w, rng.randrange(3), random_colour(rng)
        oy = top - depth * rng.uniform(0.3, 0.6)
        if kind == 0:
            c.rect(ox - s * 0.06, oy - s * 0.16, ox + s * 0.06, oy, col, "object")
        elif kind == 1:
            c.ellipse(ox, oy - s * 0.04, s * 0.14, s * 0.06, col, "object")
        else:
            c.rect(ox - s * 0.16, oy - s * 0.05, ox + s * 0.16, oy, col, "object")


def draw_chair(c: Canvas, rng, x, base, s, inst):
    w, seat_h, back_h = s * rng.uniform(0.55, 0.75), s * rng.uniform(0.45, 0.6), s * rng.uniform(0.5, 0.8)
    colour, texture = (wood(rng), "grain") if rng.random() < 0.5 else (random_colour(rng), rng.choice(
        ("flat", "speckle")))
    leg, flip = max(2, s * 0.06), rng.choice((-1, 1))
    seat_y = base - seat_h
    back_x = x - flip * w / 2
    c.rect(min(back_x, back_x + flip * leg * 1.4), seat_y - back_h, max(back_x, back_x + flip * leg * 1.4), seat_y,
           colour * 0.85, "chair", inst, texture)  # back post
    c.rect(x - w / 2, seat_y - back_h, x + w / 2, seat_y - back_h * 0.55, colour, "chair", inst, texture)  # backrest
    c.poly([[x - w / 2, seat_y], [x + w / 2, seat_y], [x + w / 2 + s * 0.12, seat_y - s * 0.1],
            [x - w / 2 + s * 0.12, seat_y - s * 0.1]], colour * 1.08, "chair", inst, texture)
    c.rect(x - w / 2, seat_y, x + w / 2, seat_y + s * 0.06, colour * 0.75, "chair", inst)
    for lx in (x - w / 2, x + w / 2 - leg):
        c.rect(lx, seat_y, lx + leg, base, colour * 0.7, "chair", inst)


def draw_bed(c: Canvas, rng, x, base, s, inst):
    w, h = s * rng.uniform(2.2, 3.0), s * rng.uniform(0.45, 0.6)
    frame = wood(rng) if rng.random() < 0.6 else random_colour(rng)
    side = rng.choice((-1, 1))
    head_x = x + side * w / 2
    c.rect(min(head_x, head_x - side * s * 0.12), base - h - s * 0.6, max(head_x, head_x - side * s * 0.12), base,
           frame, "bed", inst, "grain")  # headboard
    c.rect(x - w / 2, base - h * 0.45, x + w / 2, base, frame * 0.8, "bed", inst, "grain")
    mattress = np.array((238, 236, 230), np.float32) * rng.uniform(0.85, 1.0)
    c.poly([[x - w / 2, base - h * 0.45], [x + w / 2, base - h * 0.45], [x + w / 2, base - h],
            [x - w / 2 + s * 0.2, base - h]], mattress, "bed", inst)
    blanket = random_colour(rng)
    foot = x - side * w / 2
    c.poly([[foot, base - h * 0.5], [x + side * w * 0.15, base - h * 0.5], [x + side * w * 0.15, base - h * 1.02],
            [foot + side * s * 0.15, base - h * 1.02]], blanket, "bed", inst, rng.choice(("flat", "checks",
                                                                                          "stripes")))
    c.ellipse(head_x - side * s * 0.45, base - h - s * 0.06, s * 0.32, s * 0.12, mattress * 0.97, "bed", inst)


def draw_window(c: Canvas, rng, x, horizon, s, inst):
    w, h = s * rng.uniform(1.0, 1.6), s * rng.uniform(0.9, 1.3)
    top = horizon * rng.uniform(0.12, 0.3)
    frame = np.array(rng.choice([(240, 240, 240), (120, 80, 50), (60, 60, 60), (200, 200, 195)]), np.float32)
    c.rect(x - w / 2 - 3, top - 3, x + w / 2 + 3, top + h + 3, frame, "window", inst)
    sky = np.array((140, 190, 235), np.float32) * rng.uniform(0.75, 1.1)
    c.rect(x - w / 2, top, x + w / 2, top + h, sky, "window", inst)
    glass = (c.yy >= top) & (c.yy < top + h * 0.4) & (c.xx >= x - w / 2) & (c.xx < x + w / 2)
    c.fill(glass, sky * 1.12, "window", inst)
    if rng.random() < 0.5:  # a tree or hill outside
        c.ellipse(x + rng.uniform(-0.3, 0.3) * w, top + h, w * 0.4, h * 0.3, (80, 140, 80), "window", inst)
        c.rect(x - w / 2 - 3, top + h, x + w / 2 + 3, top + h + 3, frame, "window", inst)
    c.rect(x - 1.5, top, x + 1.5, top + h, frame, "window", inst)
    c.rect(x - w / 2, top + h / 2 - 1.5, x + w / 2, top + h / 2 + 1.5, frame, "window", inst)
    c.rect(x - w / 2 - 5, top + h + 2, x + w / 2 + 5, top + h + 6, frame * 0.9, "window", inst)  # sill
    if rng.random() < 0.4:  # curtains (not part of the window)
        curtain = random_colour(rng)
        for cx in (x - w / 2 - 8, x + w / 2 + 1):
            c.rect(cx, top - 6, cx + 7, top + h + 10, curtain, None, texture="stripes")


def draw_door(c: Canvas, rng, x, horizon, s, inst):
    w, h = s * rng.uniform(0.8, 1.0), horizon * rng.uniform(0.72, 0.88)
    colour, texture = (wood(rng), "grain") if rng.random() < 0.6 else (random_colour(rng, (0, 0.5)), "flat")
    bottom = horizon + 2
    c.rect(x - w / 2 - 3, bottom - h - 3, x + w / 2 + 3, bottom, colour * 0.7, "door", inst)  # frame
    c.rect(x - w / 2, bottom - h, x + w / 2, bottom, colour, "door", inst, texture)
    for y0, y1 in ((0.08, 0.45), (0.55, 0.92)):
        c.rect(x - w / 2 + w * 0.15, bottom - h + h * y0, x + w / 2 - w * 0.15, bottom - h + h * y1, colour * 0.88,
               "door", inst, texture)
    knob = x + rng.choice((-1, 1)) * w * 0.35
    c.ellipse(knob, bottom - h * 0.48, max(1.5, s * 0.05), max(1.5, s * 0.05), (200, 180, 90), "door", inst)


def draw_lamp(c: Canvas, rng, x, base, s, inst):
    h = s * rng.uniform(1.3, 1.8)
    metal = np.array(rng.choice([(60, 60, 60), (180, 180, 185), (170, 140, 70)]), np.float32)
    c.ellipse(x, base - s * 0.03, s * 0.22, s * 0.06, metal, "lamp", inst)
    c.line(x, base, x, base - h + s * 0.2, max(2, s * 0.05), metal, "lamp", inst)
    shade, sw, top = random_colour(rng, (0.1, 0.5), (0.8, 1.0)), s * rng.uniform(0.3, 0.45), base - h
    c.poly([[x - sw * 0.6, top], [x + sw * 0.6, top], [x + sw, top + s * 0.4], [x - sw, top + s * 0.4]],
           shade, "lamp", inst)
    glow = np.exp(-(((c.xx - x) ** 2 + (c.yy - top - s * 0.2) ** 2) / (2 * (s * 0.8) ** 2)))
    c.image += (glow * 40 * rng.uniform(0.5, 1.0))[..., None]


def draw_bookshelf(c: Canvas, rng, x, base, s, inst):
    w, h = s * rng.uniform(0.9, 1.3), s * rng.uniform(1.5, 2.1)
    colour = wood(rng) if rng.random() < 0.6 else random_colour(rng, val=(0.3, 0.95))
    c.rect(x - w / 2, base - h, x + w / 2, base, colour, "bookshelf", inst, "grain")
    shelves, t = rng.randint(3, 5), max(2, s * 0.06)
    inner = (h - t) / shelves
    for k in range(shelves):
        y1 = base - t - k * inner
        y0 = y1 - inner + t
        c.rect(x - w / 2 + t, y0, x + w / 2 - t, y1, colour * 0.45, "bookshelf", inst)
        bx = x - w / 2 + t
        while bx < x + w / 2 - t - 2:
            bw = min(rng.uniform(2, 5), x + w / 2 - t - bx)
            if rng.random() < 0.85:
                c.rect(bx, y0 + (y1 - y0) * rng.uniform(0.05, 0.35), bx + bw, y1, random_colour(rng), "bookshelf",
                       inst)
            bx += bw + 0.5


def draw_television(c: Canvas, rng, x, base, s, inst):
    w = s * rng.uniform(1.3, 1.9)
    h = w * rng.uniform(0.55, 0.62)
    stand_h = s * rng.uniform(0.35, 0.5)
    stand = wood(rng) if rng.random() < 0.5 else random_colour(rng, val=(0.2, 0.6))
    c.rect(x - w * 0.6, base - stand_h, x + w * 0.6, base, stand, "cabinet", texture="grain")
    top = base - stand_h - h - s * 0.08
    c.rect(x - w * 0.08, top + h, x + w * 0.08, base - stand_h, (35, 35, 38), "television", inst)
    c.rect(x - w / 2, top, x + w / 2, top + h, (25, 25, 28), "television", inst)
    screen = (c.yy >= top + 2) & (c.yy < top + h - 2) & (c.xx >= x - w / 2 + 2) & (c.xx < x + w / 2 - 2)
    if rng.random() < 0.6:  # switched on: a picture
        a, b = random_colour(rng), random_colour(rng)
        t = ((c.yy - top) / max(h, 1))[screen][:, None]
        c.image[screen] = a * (1 - t) + b * t
    else:
        c.image[screen] = np.array((40, 44, 50), np.float32) + 20 * c.noise[screen][:, None]


def draw_plant(c: Canvas, rng, x, base, s, inst):
    pot = random_colour(rng, (0.3, 0.7), (0.4, 0.8))
    ph = s * rng.uniform(0.3, 0.45)
    c.poly([[x - s * 0.2, base - ph], [x + s * 0.2, base - ph], [x + s * 0.14, base], [x - s * 0.14, base]], pot,
           "plant")
    green = np.array(colorsys.hsv_to_rgb(rng.uniform(0.22, 0.4), 0.6, rng.uniform(0.35, 0.7)), np.float32) * 255
    for _ in range(rng.randint(5, 9)):
        c.ellipse(x + rng.uniform(-0.3, 0.3) * s, base - ph - rng.uniform(0.1, 0.7) * s, s * 0.16, s * 0.07,
                  green * rng.uniform(0.8, 1.2), "plant", angle=rng.uniform(0, 180))


def draw_picture(c: Canvas, rng, x, horizon, s, inst):
    w, h = s * rng.uniform(0.5, 1.0), s * rng.uniform(0.4, 0.8)
    top = horizon * rng.uniform(0.15, 0.4)
    c.rect(x - w / 2 - 2, top - 2, x + w / 2 + 2, top + h + 2, wood(rng) * 0.6, "picture")
    c.rect(x - w / 2, top, x + w / 2, top + h, random_colour(rng), "picture")
    for _ in range(3):
        c.ellipse(x + rng.uniform(-0.3, 0.3) * w, top + rng.uniform(0.3, 0.7) * h, w * 0.15, h * 0.15,
                  random_colour(rng), "picture")


def draw_clock(c: Canvas, rng, x, horizon, s, inst):
    r, cy = s * rng.uniform(0.18, 0.28), horizon * rng.uniform(0.15, 0.35)
    c.ellipse(x, cy, r + 1.5, r + 1.5, random_colour(rng, val=(0.2, 0.6)), "clock")
    c.ellipse(x, cy, r, r, (240, 240, 235), "clock")
    for angle in (rng.uniform(0, 6.3), rng.uniform(0, 6.3)):
        c.line(x, cy, x + r * 0.7 * np.cos(angle), cy + r * 0.7 * np.sin(angle), 1.5, (20, 20, 20), "clock")


def draw_rug(c: Canvas, rng, x, base, s, inst):
    w, d = s * rng.uniform(1.5, 2.6), s * rng.uniform(0.3, 0.5)
    colour = random_colour(rng)
    if rng.random() < 0.5:
        c.ellipse(x, base - d / 2, w / 2, d / 2, colour, "rug", texture=rng.choice(("speckle", "stripes")))
    else:
        c.poly([[x - w / 2, base], [x + w / 2, base], [x + w / 2 - d * 0.6, base - d], [x - w / 2 + d * 0.6, base - d]],
               colour, "rug", texture=rng.choice(("checks", "stripes", "speckle")))


def draw_cabinet(c: Canvas, rng, x, base, s, inst):
    w, h = s * rng.uniform(0.7, 1.2), s * rng.uniform(0.6, 1.0)
    colour = wood(rng) if rng.random() < 0.5 else random_colour(rng)
    c.rect(x - w / 2, base - h, x + w / 2, base, colour, "cabinet", texture="grain")
    for k in range(3):
        y0 = base - h + 2 + k * (h - 4) / 3
        c.rect(x - w / 2 + 2, y0 + 1, x + w / 2 - 2, y0 + (h - 4) / 3 - 1, colour * 0.85, "cabinet")
        c.rect(x - 2, y0 + (h - 4) / 6 - 1, x + 2, y0 + (h - 4) / 6 + 1, (200, 200, 200), "cabinet")


def draw_object(c: Canvas, rng, x, base, s, inst):
    colour = random_colour(rng)
    if rng.random() < 0.5:
        c.rect(x - s * 0.2, base - s * 0.3, x + s * 0.2, base, colour, "object", texture="speckle")
    else:
        c.ellipse(x, base - s * 0.18, s * 0.18, s * 0.18, colour, "object")


DRAW = {"sink": draw_sink, "table": draw_table, "chair": draw_chair, "bed": draw_bed, "window": draw_window,
        "door": draw_door, "lamp": draw_lamp, "bookshelf": draw_bookshelf, "television": draw_television,
        "plant": draw_plant, "picture": draw_picture, "clock": draw_clock, "rug": draw_rug, "cabinet": draw_cabinet,
        "object": draw_object}
# footprint half-width in units of the scale s, for placement without heavy overlap
HALF_WIDTH = {"sink": 0.6, "table": 1.0, "chair": 0.45, "bed": 1.4, "window": 0.75, "door": 0.55, "lamp": 0.4,
              "bookshelf": 0.6, "television": 0.95, "plant": 0.35, "picture": 0.45, "clock": 0.3, "rug": 1.0,
              "cabinet": 0.5, "object": 0.25}


def draw_background(c: Canvas, rng, horizon: int, wall_colour: str) -> None:
    wall = np.array(WALL_COLOURS[wall_colour], np.float32) * rng.uniform(0.93, 1.04)
    c.rect(0, 0, c.w, horizon, wall, "wall", texture=rng.choice(("flat", "flat", "speckle", "stripes")))
    floor = wood(rng) if rng.random() < 0.5 else random_colour(rng, (0.05, 0.5), (0.3, 0.8))
    c.rect(0, horizon, c.w, c.h, floor, "floor", texture=rng.choice(("grain", "checks", "speckle")))
    c.rect(0, horizon - 2, c.w, horizon + 1, wall * 0.8, "wall")  # skirting board
    if rng.random() < 0.5:  # floor boards / tiles converging to a vanishing point
        vx = rng.uniform(0.3, 0.7) * c.w
        for k in range(-6, 13):
            x_bottom = k * c.w / 6
            c.line(vx + (x_bottom - vx) * 0.25, horizon + 1, x_bottom, c.h, 1, floor * 0.8, "floor")


def place(rng, name: str, s: float, width: int, taken: list[tuple[float, float]]) -> float | None:
    half = HALF_WIDTH[name] * s
    for _ in range(30):
        x = rng.uniform(half + 2, width - half - 2) if width > 2 * half + 4 else width / 2
        if all(abs(x - cx) > 0.7 * (half + ch) for cx, ch in taken):
            taken.append((x, half))
            return x
    return None


def draw_room(rng: random.Random, height: int = 192, width: int = 256, targets=(2, 4), distractors=(1, 3),
              include: tuple[str, ...] = (), twice: tuple[str, ...] = (), style: str = "rich") -> Room:
    """A room with ``targets`` (a (min, max) count) distinct target classes, ``include`` among them, and
    ``distractors`` distractors; each class of ``twice`` (among ``include``) is drawn a second time, a look-alike
    (its own instance id, its own colours). ``style`` "plain" draws the learning benchmark's rooms instead
    (``draw_plain_room``: the other arguments do not apply)."""
    if style == "plain":
        return draw_plain_room(rng)
    if style != "rich":
        raise ValueError(f"unknown room style {style!r} (rich, plain)")
    c = Canvas(rng, height, width)
    horizon = int(height * rng.uniform(0.45, 0.6))
    wall_colour = rng.choice(sorted(WALL_COLOURS))
    draw_background(c, rng, horizon, wall_colour)
    others = sorted(set(TARGETS) - set(include))
    chosen = list(include) + rng.sample(others, max(0, rng.randint(*targets) - len(include)))
    extra = [rng.choice(DISTRACTORS) for _ in range(rng.randint(*distractors))]
    unit = height / rng.uniform(2.8, 4.6)  # the camera's distance: nearer rooms show fewer, larger things
    wall_taken, floor_taken, standing = [], [], []
    for k, name in enumerate(chosen + extra + list(twice)):
        inst = k + 1
        if name in ON_WALL:
            s = unit * rng.uniform(0.8, 1.15)
            x = place(rng, name, s, width, wall_taken)
            if x is not None:
                DRAW[name](c, rng, x, horizon, s, inst)
            continue
        base = rng.uniform(horizon + 6, height - 2) if name != "television" else rng.uniform(horizon + 4, horizon + 20)
        depth = (base - horizon) / (height - horizon)
        s = unit * (0.55 + 0.7 * depth) * rng.uniform(0.85, 1.15)
        standing.append((base, name, s, inst))
    for base, name, s, inst in sorted(standing):
        x = place(rng, name, s, width, floor_taken)
        if x is None:
            continue
        if name != "rug":
            c.shadow(x + s * 0.1, base, HALF_WIDTH[name] * s * 1.1, s * 0.1, rng.uniform(0.2, 0.4))
        DRAW[name](c, rng, x, base, s, inst)
    light_x = rng.uniform(-0.3, 1.3) * width
    gain = 1.0 + rng.uniform(0.08, 0.18) * (1 - np.abs(c.xx - light_x) / (1.5 * width)) - 0.1
    image = np.clip(c.image * gain[..., None] * rng.uniform(0.9, 1.08) + 2.5 * c.noise[..., None], 0, 255)
    labels = c.labels
    masks = {name: labels == LABELS.index(name) for name in chosen}
    masks = {name: m for name, m in masks.items() if m.sum() >= 60}
    if not masks:  # every target hidden or unplaced (rare): draw another room
        return draw_room(rng, height, width, targets, distractors, include, twice)
    return Room(image.astype(np.uint8), labels, c.instances, masks, wall_colour,
                [n for n in extra if (labels == LABELS.index(n)).any()])


# The learning benchmark's rooms (bench/bench_training.py; its runs since 2026-11-26): seven classes, each in one
# colour (RGB) and a simple shape, on a flat wall and floor. Colour tells the classes apart, so a tiny random LISA
# learns them within 15 CPU-minutes; the rich rooms above take the embedded model's hours.
PLAIN_COLOURS = {"sink": (240, 235, 235), "table": (120, 70, 40), "chair": (60, 140, 60), "bed": (160, 80, 160),
                 "window": (150, 200, 230), "door": (180, 100, 30), "lamp": (240, 220, 40)}


def plain_shape(name: str, layer: np.ndarray, x: int, y: int, w: int, h: int) -> None:
    if name in ("sink", "lamp"):
        cv2.ellipse(layer, (x + w // 2, y + h // 2), (w // 2, h // 3), 0, 0, 360, 1, -1)
    elif name == "table":  # a top on two legs
        for x0, y0, x1, y1 in ((x, y, x + w, y + h // 4), (x, y, x + w // 8, y + h), (x + w - w // 8, y, x + w, y + h)):
            cv2.rectangle(layer, (x0, y0), (x1, y1), 1, -1)
    elif name == "chair":  # a back and a seat
        cv2.rectangle(layer, (x, y), (x + w // 4, y + h), 1, -1)
        cv2.rectangle(layer, (x, y + h // 2), (x + w, y + h // 2 + h // 5), 1, -1)
    else:
        cv2.rectangle(layer, (x, y), (x + w, y + h), 1, -1)


def draw_plain_room(rng: random.Random, height: int = 96, width: int = 128, n_objects: int = 3,
                    tries: int = 30) -> Room:
    """A plain room: up to ``n_objects`` of ``PLAIN_COLOURS``' classes at random places that do not touch."""
    wall = [rng.randint(150, 215) for _ in range(3)]
    horizon = rng.randint(height // 2, 3 * height // 4)
    floor = [rng.randint(70, 130) for _ in range(3)]
    image = np.zeros((height, width, 3), np.uint8)
    image[:horizon], image[horizon:] = wall, floor
    labels = np.full((height, width), LABELS.index("wall"), np.int32)
    labels[horizon:] = LABELS.index("floor")
    instances = np.zeros((height, width), np.uint8)
    taken = np.zeros((height, width), np.uint8)
    for k, name in enumerate(rng.sample(sorted(PLAIN_COLOURS), n_objects)):
        for _ in range(tries):
            layer = np.zeros((height, width), np.uint8)
            w, h = rng.randint(width // 6, width // 3), rng.randint(height // 6, height // 3)
            plain_shape(name, layer, rng.randint(0, width - w), rng.randint(0, height - h), w, h)
            if not (layer & taken).any():
                break
        else:
            continue
        region = layer.astype(bool)
        image[region], labels[region], instances[region] = PLAIN_COLOURS[name], LABELS.index(name), k + 1
        taken |= cv2.dilate(layer, np.ones((5, 5), np.uint8))  # a gap between objects keeps their outlines apart
    masks = {name: labels == LABELS.index(name) for name in PLAIN_COLOURS if (labels == LABELS.index(name)).any()}
    if not masks:
        return draw_plain_room(rng, height, width, n_objects, tries)
    nearest_wall = min(WALL_COLOURS, key=lambda n: sum((a - b) ** 2 for a, b in zip(WALL_COLOURS[n], wall)))
    return Room(image, labels, instances, masks, nearest_wall)
