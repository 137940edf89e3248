"""Procedural faces: persistent identity attributes, per-image variation, and the renderer.

An identity is a dict of attributes drawn once from its own seed (face shape, skin, hair,
eyes, brows, nose, mouth, beard, and the fine marks that blur and low resolution erase:
freckles, scar, mole, eye colour, glasses, earrings, wrinkles, lipstick). An image is that
identity seen under a per-image state (pose, scale, position, expression, lighting,
background, clothes, an occasional hat or removed accessory). Faces are drawn with PIL at
twice the output size and box-downsampled to 112 x 112 for antialiasing.
"""

import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

OUTPUT_SIZE = 112
SUPERSAMPLE = 2

SKIN_TONES = {"pale": (247, 215, 196), "fair": (236, 192, 160), "olive": (205, 160, 115),
              "tan": (190, 138, 98), "brown": (150, 100, 70), "dark": (100, 66, 46)}
HAIR_COLOURS = {"black": (28, 24, 22), "brown": (96, 62, 36), "blond": (222, 190, 120),
                "red": (170, 70, 35), "grey": (160, 160, 160)}
EYE_COLOURS = {"blue": (40, 110, 225), "green": (40, 160, 70), "brown": (110, 60, 25),
               "grey": (140, 150, 160), "hazel": (165, 125, 40)}
FRAME_COLOURS = {"black": (20, 20, 20), "red": (200, 30, 30), "gold": (212, 175, 55)}
METAL_COLOURS = {"gold": (255, 200, 40), "silver": (225, 225, 235)}
FACE_SHAPES = {"oval": (0.84, 1.0), "round": (0.95, 0.95), "long": (0.76, 1.06), "square": (0.9, 0.96),
               "heart": (0.88, 1.0)}
HAIR_STYLES = ("short", "long", "bob", "bangs", "curly", "bald")
SCAR_PLACES = {"left cheek": (-0.5, 0.22, 35), "right cheek": (0.5, 0.22, -35), "forehead": (0.15, -0.62, 10),
               "chin": (-0.18, 0.78, -20)}
MOLE_PLACES = {"above the left lip": (-0.24, 0.36), "above the right lip": (0.24, 0.36),
               "on the left cheek": (-0.55, 0.12), "on the right cheek": (0.55, 0.12),
               "on the chin": (0.1, 0.74), "near the nose": (0.16, 0.1)}
EXPRESSIONS = ("neutral", "smiling", "mouth open", "frowning")


def _pick(rng: np.random.Generator, options, p=None) -> Any:
    options = list(options)
    return options[int(rng.choice(len(options), p=p))]


def identity_attributes(seed: int, identity: int) -> dict[str, Any]:
    """Attributes of one identity; depends only on (seed, identity)."""
    rng = np.random.default_rng((seed, 7, identity))
    gender = _pick(rng, ("man", "woman"))
    man = gender == "man"
    old = bool(rng.random() < 0.25)
    hair_colour = "grey" if old and rng.random() < 0.6 else _pick(rng, ("black", "brown", "blond", "red"), (0.35, 0.35, 0.2, 0.1))
    styles = (0.3, 0.08, 0.1, 0.14, 0.18, 0.2) if man else (0.06, 0.36, 0.22, 0.2, 0.16, 0.0)
    beard = _pick(rng, ("none", "full beard", "goatee"), (0.6, 0.25, 0.15)) if man else "none"
    return {
        "gender": gender,
        "age": "old" if old else "young",
        "face_shape": _pick(rng, FACE_SHAPES),
        "skin": _pick(rng, SKIN_TONES),
        "hair_colour": hair_colour,
        "hair_style": _pick(rng, HAIR_STYLES, styles),
        "eye_colour": _pick(rng, EYE_COLOURS),
        "eye_shape": _pick(rng, ("round", "narrow", "almond")),
        "brows": _pick(rng, ("thick", "thin", "arched")),
        "nose": _pick(rng, ("small", "big", "pointy")),
        "mouth": _pick(rng, ("wide", "small")),
        "beard": beard,
        "moustache": bool(man and rng.random() < 0.3),
        "lipstick": bool(not man and rng.random() < 0.35),
        "freckles": bool(rng.random() < 0.35),
        "scar": _pick(rng, ("none", *SCAR_PLACES), (0.7, 0.075, 0.075, 0.075, 0.075)),
        "mole": _pick(rng, ("none", *MOLE_PLACES), (0.58, 0.07, 0.07, 0.07, 0.07, 0.07, 0.07)),
        "glasses": _pick(rng, ("none", "round", "square"), (0.65, 0.175, 0.175)),
        "glasses_colour": _pick(rng, FRAME_COLOURS),
        "earrings": _pick(rng, ("none", "studs", "hoops"), (0.75, 0.125, 0.125) if man else (0.45, 0.275, 0.275)),
        "earrings_metal": _pick(rng, METAL_COLOURS),
        # Geometry the captions do not mention: it identifies a person in clean images only.
        "face_width": float(rng.uniform(0.92, 1.08)),
        "eye_spacing": float(rng.uniform(0.36, 0.48)),
        "eye_size": float(rng.uniform(0.85, 1.15)),
        "feature_height": float(rng.uniform(-0.06, 0.06)),
        "freckle_seed": int(rng.integers(2**31)),
    }


def image_state(seed: int, identity: int, image: int, attributes: dict[str, Any]) -> dict[str, Any]:
    """Per-image variation of one identity; depends only on (seed, identity, image)."""
    rng = np.random.default_rng((seed, 11, identity, image))
    return {
        "yaw": float(rng.uniform(-0.35, 0.35)),
        "roll": float(rng.uniform(-12, 12)),
        "scale": float(rng.uniform(0.86, 1.1)),
        "shift": (float(rng.uniform(-6, 6)), float(rng.uniform(-5, 5))),
        "expression": _pick(rng, EXPRESSIONS, (0.4, 0.35, 0.15, 0.1)),
        "light_angle": float(rng.uniform(0, 2 * math.pi)),
        "light_strength": float(rng.uniform(0.0, 0.45)),
        "brightness": float(rng.uniform(0.78, 1.12)),
        "cast": [float(c) for c in rng.uniform(0.92, 1.08, size=3)],
        "background": [[int(c) for c in rng.integers(30, 230, size=3)] for _ in range(2)],
        "blobs": int(rng.integers(0, 4)),
        "blob_seed": int(rng.integers(2**31)),
        "clothes": [int(c) for c in rng.integers(20, 235, size=3)],
        "hat": bool(rng.random() < 0.12),
        "hat_colour": [int(c) for c in rng.integers(20, 235, size=3)],
        "glasses_on": bool(attributes["glasses"] != "none" and rng.random() >= 0.15),
        "earrings_on": bool(attributes["earrings"] != "none" and rng.random() >= 0.15),
    }


def covered_marks(attributes: dict[str, Any], state: dict[str, Any], version: int) -> set[str]:
    """The fine marks ("scar", "mole", "wrinkles") that render_face draws and then covers with hair
    or a beard, so that the image does not show them, as the synthetic generator's `version` counts
    them (its captions leave them out). Version 1: none. Version 2: bangs (under no hat, which
    replaces them) over a forehead scar and the forehead wrinkles, a full beard over a chin scar,
    either beard over a mole on the chin. Version 3 adds any hair front (under no hat) over the
    wrinkles: it reaches down past all but a faint edge of them, which version 2 missed. A goatee is
    narrower than a chin scar, which it covers in part only; a forehead scar shows in part below a
    hair front without bangs."""
    if version == 1:
        return set()
    hair_front = attributes["hair_style"] != "bald" and not state["hat"]
    bangs = attributes["hair_style"] == "bangs" and not state["hat"]
    scar, beard = attributes["scar"], attributes["beard"]
    covered = set()
    if (bangs and scar == "forehead") or (beard == "full beard" and scar == "chin"):
        covered.add("scar")
    if beard != "none" and attributes["mole"] == "on the chin":
        covered.add("mole")
    if attributes["age"] == "old" and (bangs or (version >= 3 and hair_front)):
        covered.add("wrinkles")
    return covered


def _shade(colour, factor: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, c * factor))) for c in colour)


# The least luma difference (of 255) from the skin at which version 4 draws the marks and brows:
# version 3's fixed or skin-relative colours left dark skin's mole, scar and wrinkles, and blond
# brows on olive or tan skin, within a few levels of the skin, shown in clean images by hardly a pixel
# while their captions name them.
MARK_CONTRAST = 50


def _luma(colour) -> float:
    return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]


def _seen_on(colour, skin, version: int) -> tuple[int, int, int]:
    """colour, or from version 4, where its luma lies within MARK_CONTRAST of the skin's, that hue
    darkened to MARK_CONTRAST below the skin."""
    difference = _luma(skin) - _luma(colour)
    if version < 4 or abs(difference) >= MARK_CONTRAST or _luma(colour) == 0:
        return tuple(colour)
    return _shade(colour, max(0.0, _luma(skin) - MARK_CONTRAST) / _luma(colour))


def render_face(attributes: dict[str, Any], state: dict[str, Any], version: int) -> Image.Image:
    """Draws one 112 x 112 RGB face as the synthetic generator's `version` draws it: versions 1 to 3
    alike; version 4 with the marks and brows kept MARK_CONTRAST from the skin (_seen_on) and wrinkles
    one output pixel wide instead of half of one."""
    size = OUTPUT_SIZE * SUPERSAMPLE
    u = SUPERSAMPLE * state["scale"]  # pixels per unit of the 112-pixel design grid
    cx = size / 2 + SUPERSAMPLE * state["shift"][0]
    cy = size / 2 + SUPERSAMPLE * (state["shift"][1] + 2)
    a = 27 * u * FACE_SHAPES[attributes["face_shape"]][0] * attributes["face_width"]  # half-width
    b = 34 * u * FACE_SHAPES[attributes["face_shape"]][1]  # half-height
    yaw = state["yaw"]
    skin, hair = SKIN_TONES[attributes["skin"]], HAIR_COLOURS[attributes["hair_colour"]]

    background = _background(size, state)
    draw = ImageDraw.Draw(background)
    draw.ellipse([cx - 2.1 * a, cy + 0.95 * b, cx + 2.1 * a, cy + 2.6 * b], fill=tuple(state["clothes"]))
    draw.rectangle([cx - 0.38 * a, cy + 0.5 * b, cx + 0.38 * a, cy + 1.1 * b], fill=_shade(skin, 0.9))

    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    fx = cx + yaw * a * 0.35  # features turn with the head
    style = attributes["hair_style"]
    if style in ("long", "bob") and not state["hat"]:
        bottom = cy + (1.25 if style == "long" else 0.55) * b
        draw.rounded_rectangle([cx - 1.22 * a, cy - 1.12 * b, cx + 1.22 * a, bottom], radius=0.9 * a, fill=hair)
    _ears(draw, cx, cy, a, b, yaw, skin, attributes, state)
    _face_outline(draw, cx, cy, a, b, attributes["face_shape"], skin)
    _marks(draw, fx, cy, a, b, u, attributes, version)
    _eyes_and_brows(draw, fx, cy, a, b, u, yaw, attributes, hair, version)
    _nose_mouth_beard(draw, fx, cy, a, b, u, attributes, state, skin, hair)
    _hair_front(draw, cx, cy, a, b, u, style, hair, state)
    if state["glasses_on"]:
        _glasses(draw, fx, cy, a, b, u, yaw, attributes)
    layer = layer.rotate(state["roll"], Image.Resampling.BICUBIC, center=(cx, cy))
    background.paste(layer, (0, 0), layer)
    return _light(background, state).reduce(SUPERSAMPLE)


def _background(size: int, state: dict[str, Any]) -> Image.Image:
    top, bottom = (np.array(c, dtype=np.float32) for c in state["background"])
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    array = np.broadcast_to(top * (1 - t) + bottom * t, (size, size, 3)).astype(np.uint8)
    image = Image.fromarray(array)
    rng = np.random.default_rng(state["blob_seed"])
    draw = ImageDraw.Draw(image)
    for _ in range(state["blobs"]):
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(10, 50)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return image


def _face_outline(draw, cx, cy, a, b, shape, skin) -> None:
    if shape == "square":
        draw.rounded_rectangle([cx - a, cy - b, cx + a, cy + b], radius=0.55 * a, fill=skin)
    elif shape == "heart":
        draw.ellipse([cx - a, cy - b, cx + a, cy + 0.5 * b], fill=skin)
        draw.polygon([(cx - 0.98 * a, cy - 0.1 * b), (cx + 0.98 * a, cy - 0.1 * b), (cx + 0.2 * a, cy + b),
                      (cx - 0.2 * a, cy + b)], fill=skin)
    else:
        draw.ellipse([cx - a, cy - b, cx + a, cy + b], fill=skin)


def _ears(draw, cx, cy, a, b, yaw, skin, attributes, state) -> None:
    for side in (-1, 1):
        width = 0.2 * a * (1 - 0.8 * max(0.0, side * yaw))  # the ear turned away shrinks
        x = cx + side * (a - 0.05 * a) - yaw * 0.2 * a
        draw.ellipse([x - width, cy - 0.28 * b, x + width, cy + 0.12 * b], fill=_shade(skin, 0.93))
        if state["earrings_on"]:
            metal = METAL_COLOURS[attributes["earrings_metal"]]
            ex, ey = x + side * 0.15 * width, cy + 0.14 * b
            if attributes["earrings"] == "studs":
                draw.ellipse([ex - 2.6, ey - 2.6, ex + 2.6, ey + 2.6], fill=metal)
            else:
                draw.ellipse([ex - 5, ey - 1, ex + 5, ey + 10], outline=metal, width=2)


def _marks(draw, fx, cy, a, b, u, attributes, version) -> None:
    skin = SKIN_TONES[attributes["skin"]]
    if attributes["freckles"]:
        rng = np.random.default_rng(attributes["freckle_seed"])
        colour = _seen_on(_shade(skin, 0.55), skin, version)
        for side in (-1, 1):
            for x, y in zip(rng.uniform(0.18, 0.62, 14), rng.uniform(0.0, 0.3, 14)):
                px, py = fx + side * x * a, cy + y * b
                draw.ellipse([px - 0.9 * u, py - 0.9 * u, px + 0.9 * u, py + 0.9 * u], fill=colour)
    if attributes["mole"] != "none":
        x, y = MOLE_PLACES[attributes["mole"]]
        px, py = fx + x * a, cy + y * b
        colour = _seen_on((60, 35, 25), skin, version)
        draw.ellipse([px - 1.3 * u, py - 1.3 * u, px + 1.3 * u, py + 1.3 * u], fill=colour)
    if attributes["scar"] != "none":
        x, y, angle = SCAR_PLACES[attributes["scar"]]
        dx, dy = 7 * u * math.cos(math.radians(angle)), 7 * u * math.sin(math.radians(angle))
        px, py = fx + x * a, cy + y * b
        colour = _seen_on((150, 45, 50), skin, version)
        draw.line([px - dx, py - dy, px + dx, py + dy], fill=colour, width=max(1, round(u)))
        for t in (-0.5, 0.0, 0.5):  # stitch marks across the cut
            sx, sy = px + t * dx, py + t * dy
            draw.line([sx + 0.25 * dy, sy - 0.25 * dx, sx - 0.25 * dy, sy + 0.25 * dx], fill=colour, width=1)
    if attributes["age"] == "old":
        colour = _seen_on(_shade(skin, 0.7), skin, version)
        width = 1 if version < 4 else SUPERSAMPLE
        for k in range(3):
            y = cy - (0.55 + 0.1 * k) * b
            draw.arc([fx - 0.45 * a, y - 3 * u, fx + 0.45 * a, y + 3 * u], 200, 340, fill=colour, width=width)


def _eyes_and_brows(draw, fx, cy, a, b, u, yaw, attributes, hair, version) -> None:
    ey = cy + (-0.14 + attributes["feature_height"]) * b
    height = {"round": 4.2, "narrow": 2.6, "almond": 3.4}[attributes["eye_shape"]] * u * attributes["eye_size"]
    iris = EYE_COLOURS[attributes["eye_colour"]]
    for side in (-1, 1):
        ex = fx + side * attributes["eye_spacing"] * a * (1 - 0.3 * abs(yaw))
        width = 7 * u * attributes["eye_size"] * (1 - 0.6 * max(0.0, side * yaw))
        draw.ellipse([ex - width, ey - height, ex + width, ey + height], fill=(250, 250, 250), outline=(60, 40, 35))
        r = min(height, 3.4 * u) * 0.95
        ix = ex + yaw * 2 * u
        draw.ellipse([ix - r, ey - r, ix + r, ey + r], fill=iris)
        draw.ellipse([ix - 0.4 * r, ey - 0.4 * r, ix + 0.4 * r, ey + 0.4 * r], fill=(10, 10, 10))
        by = ey - height - 4 * u
        brow = _seen_on(_shade(hair, 0.8), SKIN_TONES[attributes["skin"]], version)
        if attributes["brows"] == "arched":
            draw.arc([ex - width * 1.1, by - 3 * u, ex + width * 1.1, by + 5 * u], 200, 340, fill=brow, width=round(1.5 * u))
        else:
            thick = 2.6 * u if attributes["brows"] == "thick" else 1.0 * u
            draw.line([ex - width * 1.1, by + side * 0.5 * u, ex + width * 1.1, by - side * 0.5 * u], fill=brow,
                      width=max(1, round(thick)))


def _nose_mouth_beard(draw, fx, cy, a, b, u, attributes, state, skin, hair) -> None:
    ny = cy + (0.2 + attributes["feature_height"]) * b
    scale = {"small": 0.75, "big": 1.35, "pointy": 1.0}[attributes["nose"]]
    shadow = _shade(skin, 0.72)
    tip = fx + state["yaw"] * 4 * u
    if attributes["nose"] == "pointy":
        draw.polygon([(fx, ny - 10 * u), (tip + 3 * u, ny), (tip - 3 * u, ny)], fill=_shade(skin, 0.85))
    draw.line([fx, ny - 9 * u * scale, tip - 0.5 * u, ny], fill=shadow, width=max(1, round(u)))
    for side in (-1, 1):
        x = tip + side * 2.6 * u * scale
        draw.ellipse([x - 1.2 * u, ny - 0.6 * u, x + 1.2 * u, ny + 0.8 * u], fill=_shade(skin, 0.55))
    my = cy + (0.5 + attributes["feature_height"] / 2) * b
    half = (10 if attributes["mouth"] == "wide" else 7) * u
    lips = (190, 30, 50) if attributes["lipstick"] else _shade(skin, 0.75)
    expression = state["expression"]
    if attributes["beard"] != "none":
        top = my - 4 * u if attributes["beard"] == "full beard" else my + 3 * u
        left = fx - (0.95 * a if attributes["beard"] == "full beard" else 0.35 * a)
        right = fx + (0.95 * a if attributes["beard"] == "full beard" else 0.35 * a)
        draw.chord([left, top - 0.35 * b, right, cy + 1.02 * b], 0, 180, fill=_shade(hair, 0.9))
        draw.chord([fx - half - 2 * u, my - 3 * u, fx + half + 2 * u, my + 4 * u], 0, 360, fill=skin)
    if expression == "smiling":
        draw.chord([fx - half, my - 5 * u, fx + half, my + 5 * u], 0, 180, fill=lips)
        draw.chord([fx - half * 0.8, my - 2 * u, fx + half * 0.8, my + 2.5 * u], 0, 180, fill=(245, 245, 240))
    elif expression == "mouth open":
        draw.ellipse([fx - half * 0.6, my - 3.5 * u, fx + half * 0.6, my + 5 * u], fill=(70, 20, 25), outline=lips, width=round(1.5 * u))
    elif expression == "frowning":
        draw.arc([fx - half, my, fx + half, my + 8 * u], 200, 340, fill=lips, width=round(2 * u))
    else:
        draw.line([fx - half, my, fx + half, my], fill=lips, width=round(2.2 * u))
    if attributes["moustache"]:
        draw.polygon([(fx - half - u, my - 1.5 * u), (fx, my - 6 * u), (fx + half + u, my - 1.5 * u),
                      (fx, my - 3.5 * u)], fill=_shade(hair, 0.85))


def _hair_front(draw, cx, cy, a, b, u, style, hair, state) -> None:
    if state["hat"]:
        colour = tuple(state["hat_colour"])
        draw.chord([cx - 1.08 * a, cy - 1.35 * b, cx + 1.08 * a, cy - 0.15 * b], 180, 360, fill=colour)
        draw.rectangle([cx - 1.2 * a, cy - 0.78 * b, cx + 1.2 * a, cy - 0.66 * b], fill=_shade(colour, 0.7))
        return
    if style == "bald":
        for side in (-1, 1):
            draw.ellipse([cx + side * 0.93 * a - 0.1 * a, cy - 0.5 * b, cx + side * 0.93 * a + 0.1 * a, cy - 0.15 * b], fill=hair)
        return
    if style == "curly":
        rng = np.random.default_rng(7)
        for angle in np.linspace(math.pi * 1.02, math.pi * 1.98, 14):
            r = rng.uniform(0.22, 0.3) * a
            x, y = cx + 1.0 * a * math.cos(angle), cy - 0.35 * b + 0.8 * b * math.sin(angle)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=hair)
    draw.chord([cx - 1.06 * a, cy - 1.12 * b, cx + 1.06 * a, cy - 0.1 * b], 180, 360, fill=hair)
    if style == "bangs":
        draw.rectangle([cx - 0.9 * a, cy - 0.75 * b, cx + 0.9 * a, cy - 0.42 * b], fill=hair)


def _glasses(draw, fx, cy, a, b, u, yaw, attributes) -> None:
    ey = cy + (-0.14 + attributes["feature_height"]) * b
    colour = FRAME_COLOURS[attributes["glasses_colour"]]
    width = max(1, round(1.2 * u))
    centres = []
    for side in (-1, 1):
        ex = fx + side * attributes["eye_spacing"] * a * (1 - 0.3 * abs(yaw))
        rx = 9.5 * u * (1 - 0.5 * max(0.0, side * yaw))
        box = [ex - rx, ey - 7 * u, ex + rx, ey + 7 * u]
        if attributes["glasses"] == "round":
            draw.ellipse(box, outline=colour, width=width)
        else:
            draw.rounded_rectangle(box, radius=2 * u, outline=colour, width=width)
        centres.append((ex, rx))
        draw.line([ex + side * rx, ey - 2 * u, fx + side * 0.98 * a, ey - 3 * u], fill=colour, width=width)
    draw.line([centres[0][0] + centres[0][1], ey - u, centres[1][0] - centres[1][1], ey - u], fill=colour, width=width)


def _light(image: Image.Image, state: dict[str, Any]) -> Image.Image:
    size = image.size[0]
    grid = np.linspace(-1, 1, size, dtype=np.float32)
    direction = np.cos(state["light_angle"]) * grid[None, :] + np.sin(state["light_angle"]) * grid[:, None]
    gain = state["brightness"] * (1 + state["light_strength"] * direction)[..., None] * np.array(state["cast"], np.float32)
    array = np.asarray(image, dtype=np.float32) * gain
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
