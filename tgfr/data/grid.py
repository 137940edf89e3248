"""A picture of a face-caption set: per row one identity, two clean images, the same two
degraded, and a caption of the first image."""

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tgfr.data.degrade import check_recipe_fits, degrade_image, image_rng
from tgfr.data.files import load_image
from tgfr.data.manifest import read_manifest, select_split
from tgfr.data.synthetic import GENERATOR_VERSION
from tgfr.data.synthetic_captions import make_captions
from tgfr.data.synthetic_faces import OUTPUT_SIZE, identity_attributes, image_state, render_face
from tgfr.output_paths import write_atomically

TEXT_WIDTH = 420


def _check_rows(rows: int) -> None:
    # A negative count would silently slice off the last identities ([:-1]) instead of failing.
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"rows must be a positive integer, got {rows!r}")


def synthetic_rows(rows: int, seed: int = 0) -> list[tuple[list[Image.Image], str]]:
    """Two images and one caption for identities 0..rows-1, drawn without writing a dataset."""
    _check_rows(rows)
    out = []
    for identity in range(rows):
        attributes = identity_attributes(seed, identity)
        states = [image_state(seed, identity, k, attributes) for k in range(2)]
        caption = make_captions(attributes, states[0], 1, np.random.default_rng((seed, 13, identity, 0)),
                                GENERATOR_VERSION)[0]
        out.append(([render_face(attributes, s, GENERATOR_VERSION) for s in states], caption))
    return out


def manifest_rows(manifest: str | Path, rows: int, split: str = "test",
                  recipe: str | None = None) -> list[tuple[list[Image.Image], str]]:
    """Two images and the first caption of the first `rows` identities (with 2+ images) of a split. recipe:
    checked to suit every image chosen (a down<S> below both its sides), naming the first that it does not."""
    _check_rows(rows)
    manifest = Path(manifest)
    by_identity: dict[str, list] = {}
    for record in select_split(read_manifest(manifest), split):
        by_identity.setdefault(record.identity, []).append(record)
    chosen = [records[:2] for records in by_identity.values() if len(records) >= 2][:rows]
    if not chosen:
        raise ValueError(f"split {split!r} of {manifest} has no identity with two images")
    out = []
    for pair in chosen:
        images = [load_image(manifest.parent / r.path) for r in pair]
        for record, image in zip(pair, images):
            try:
                if recipe is not None:
                    check_recipe_fits(recipe, *image.size)
            except ValueError as error:  # as tgfr data degrade names it, not a cell of the grid
                raise ValueError(f"image {manifest.parent / record.path}: {error}") from None
        out.append((images, pair[0].captions[0] if pair[0].captions else ""))
    return out


def render_grid(rows: list[tuple[list[Image.Image], str]], out: str | Path, recipe: str, seed: int = 0) -> Path:
    """Writes the grid PNG, cells of OUTPUT_SIZE x OUTPUT_SIZE; each degraded cell is its image degraded with
    `recipe` at its own size (with the generator image_rng(seed, "<row>/<column>")), then resized for the cell."""
    size = OUTPUT_SIZE
    font = ImageFont.load_default(size=13)
    header = 22
    grid = Image.new("RGB", (4 * size + TEXT_WIDTH, header + len(rows) * size), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for x, title in ((0, "clean"), (2 * size, f"degraded: {recipe}"), (4 * size + 8, "caption of the first image")):
        draw.text((x + 4, 4), title, fill=(0, 0, 0), font=font)
    for row, (images, caption) in enumerate(rows):
        y = header + row * size
        for column, image in enumerate(images):
            # As `tgfr data degrade` degrades it: degrading a resize to the cell's size refused a down<S> that suits
            # the image, and showed a down<S> or face2text milder than the copy's.
            degraded = degrade_image(image, recipe, image_rng(seed, f"{row}/{column}"))
            grid.paste(image.convert("RGB").resize((size, size)), (column * size, y))
            grid.paste(degraded.resize((size, size)), ((2 + column) * size, y))
        text = "\n".join(textwrap.wrap(caption, width=52)[:6])
        draw.multiline_text((4 * size + 8, y + 8), text, fill=(0, 0, 0), font=font, spacing=3)
    out = Path(out)
    with write_atomically(out, "grid picture", binary=True) as stream:
        grid.save(stream, format="PNG", optimize=True)
    return out
