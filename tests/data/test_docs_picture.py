"""README's picture of the synthetic set shows what the generator draws now."""

import re
from pathlib import Path

import numpy as np
from PIL import Image

from tgfr.data.grid import synthetic_rows
from tgfr.data.synthetic_faces import OUTPUT_SIZE

ROOT = Path(__file__).resolve().parents[2]


def test_readme_picture_shows_the_current_generators_faces():
    """The clean faces of docs/synthetic_grid.png equal the generator's (the captions and degraded
    copies are left out: their pixels depend on Pillow's font and filters). A new generator version
    that changes the faces fails this until the picture is drawn again with README's command."""
    command = re.search(r"`tgfr data grid --out (docs/\S+\.png) --rows (\d+)`", (ROOT / "README.md").read_text())
    assert command, "README names the command that draws its picture of the synthetic set"
    picture = np.asarray(Image.open(ROOT / command[1]).convert("RGB"), dtype=np.float64)
    rows = int(command[2])
    header = picture.shape[0] - rows * OUTPUT_SIZE
    assert 0 < header < OUTPUT_SIZE
    for row, (faces, _) in enumerate(synthetic_rows(rows)):
        for column, face in enumerate(faces):
            expected = np.asarray(face.convert("RGB").resize((OUTPUT_SIZE, OUTPUT_SIZE)), dtype=np.float64)
            y, x = header + row * OUTPUT_SIZE, column * OUTPUT_SIZE
            shown = picture[y:y + OUTPUT_SIZE, x:x + OUTPUT_SIZE]
            # Anti-aliased edges may move a little between Pillow versions; another face moves far more.
            assert np.abs(shown - expected).mean() < 1.0, (row, column)
