"""The synthetic renderer against its attributes and per-image state, and the fine marks that the
captions phrase against the pixels that the marks change."""

import numpy as np
import pytest

from tgfr.data.synthetic_captions import fine_phrases
from tgfr.data.synthetic_faces import identity_attributes, image_state, render_face

# fine_phrases name -> how to render the image without that mark: (attribute overrides, state overrides)
WITHOUT_MARK = {
    "freckles": ({"freckles": False}, {}),
    "scar": ({"scar": "none"}, {}),
    "mole": ({"mole": "none"}, {}),
    "wrinkles": ({"age": "young"}, {}),
    "lipstick": ({"lipstick": False}, {}),
    "glasses": ({}, {"glasses_on": False}),
    "earrings": ({}, {"earrings_on": False}),
}
# Hair, beard and marks that hair or a beard may cover, forced onto identities so that every such case occurs.
COVERING_CASES = [
    {"hair_style": "bangs", "scar": "forehead", "age": "old"},
    {"gender": "man", "beard": "full beard", "scar": "chin", "mole": "on the chin", "lipstick": False},
    {"gender": "man", "beard": "goatee", "scar": "chin", "mole": "on the chin", "lipstick": False},
    {"hair_style": "short", "scar": "forehead", "age": "old"},
]


def _pixels(attributes, state) -> np.ndarray:
    return np.asarray(render_face(attributes, state), np.int16)


def _mark_present(attributes, state, name: str) -> bool:
    """Whether the attributes and state give the face the mark `name` at all (drawn, maybe covered)."""
    return {"freckles": attributes["freckles"], "scar": attributes["scar"] != "none",
            "mole": attributes["mole"] != "none", "wrinkles": attributes["age"] == "old",
            "lipstick": attributes["lipstick"], "glasses": state["glasses_on"],
            "earrings": state["earrings_on"]}[name]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fine_phrases_name_exactly_the_marks_that_change_pixels(seed):
    """A mark is phrased iff rendering the image without it changes a pixel: a scar under bangs or a
    beard, wrinkles under bangs, a mole under a beard are not described."""
    faces = []
    for identity in range(6):
        attributes = identity_attributes(seed, identity)
        state = image_state(seed, identity, 0, attributes)
        faces.append((attributes, state))
        for k, case in enumerate(COVERING_CASES):
            faces.append(({**attributes, **case}, {**image_state(seed, identity, k + 1, attributes), "hat": k % 2 == 1}))
    for attributes, state in faces:
        phrased = fine_phrases(attributes, state)
        with_marks = _pixels(attributes, state)
        for name, (attribute_overrides, state_overrides) in WITHOUT_MARK.items():
            if not _mark_present(attributes, state, name):
                assert name not in phrased
                continue
            without = _pixels({**attributes, **attribute_overrides}, {**state, **state_overrides})
            shown = bool(np.any(with_marks != without))
            assert (name in phrased) == shown, (name, shown, attributes, state)
