"""Synthetic captions against the attributes and image state they describe."""

import numpy as np
import pytest

from tgfr.data.synthetic import GENERATOR_VERSION
from tgfr.data.synthetic_captions import coarse_phrases, fine_phrases, make_captions
from tgfr.data.synthetic_faces import HAIR_STYLES, identity_attributes, image_state

HAIR_WORDS = ("hair", "bob cut", "bangs", "bald head")
SINGULAR = {"studs": "stud", "hoops": "hoop"}


def _faces(count: int, seed: int = 0) -> list[tuple[dict, dict]]:
    """Attributes and first-image state of identities 0 .. count - 1."""
    faces = []
    for identity in range(count):
        attributes = identity_attributes(seed, identity)
        faces.append((attributes, image_state(seed, identity, 0, attributes)))
    return faces


def _captions(attributes, state, count: int, draw: int) -> list[str]:
    return make_captions(attributes, state, count, np.random.default_rng((0, 13, draw)), GENERATOR_VERSION)


def test_each_fine_phrase_appears_iff_its_attribute_or_state_holds():
    """A bald head (no hair front over the forehead) and no beard: no mark is covered, so each is phrased iff
    present."""
    seen = set()
    for attributes, state in _faces(80):
        attributes = {**attributes, "hair_style": "bald", "beard": "none"}
        expected = {"eye_colour"}
        expected |= {"freckles"} if attributes["freckles"] else set()
        expected |= {"scar"} if attributes["scar"] != "none" else set()
        expected |= {"mole"} if attributes["mole"] != "none" else set()
        expected |= {"glasses"} if state["glasses_on"] else set()
        expected |= {"earrings"} if state["earrings_on"] else set()
        expected |= {"wrinkles"} if attributes["age"] == "old" else set()
        expected |= {"lipstick"} if attributes["lipstick"] else set()
        assert set(fine_phrases(attributes, state, GENERATOR_VERSION)) == expected, (attributes, state)
        seen.add((attributes["age"], attributes["lipstick"]))
    assert {("old", False), ("young", False), ("young", True)} <= seen  # both sides of each condition met


@pytest.mark.parametrize("style", HAIR_STYLES)
def test_no_hair_phrase_under_a_hat(style):
    attributes, state = _faces(1)[0]
    attributes = {**attributes, "hair_style": style}
    with_hat = coarse_phrases(attributes, {**state, "hat": True})
    assert not [phrase for phrase in with_hat if any(word in phrase for word in HAIR_WORDS)]
    without_hat = coarse_phrases(attributes, {**state, "hat": False})
    assert [phrase for phrase in without_hat if any(word in phrase for word in HAIR_WORDS)]


def test_fine_details_are_spread_over_the_captions():
    """With at least as many visible fine attributes as captions, every caption names one of them."""
    checked = 0
    for identity, (attributes, state) in enumerate(_faces(60)):
        fine = fine_phrases(attributes, state, GENERATOR_VERSION)
        if len(fine) < 3:
            continue
        phrases = [phrase for paraphrases in fine.values() for phrase in paraphrases]
        for caption in _captions(attributes, state, 3, identity):
            assert any(phrase in caption for phrase in phrases), caption
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("kind", ["studs", "hoops"])
@pytest.mark.parametrize("metal", ["gold", "silver"])
def test_the_earring_phrase_is_grammatical(kind, metal):
    attributes, state = _faces(1)[0]
    phrases = fine_phrases({**attributes, "earrings": kind, "earrings_metal": metal}, {**state, "earrings_on": True},
                           GENERATOR_VERSION)
    assert phrases["earrings"] == [f"{metal} {SINGULAR[kind]} earrings", f"{metal} {kind} in the ears"]


def test_only_beardless_men_are_said_to_have_no_beard():
    said = {"man": 0, "woman": 0, "bearded": 0}
    for draw in range(40):
        for attributes, state in _faces(12):
            text = " ".join(_captions(attributes, state, 3, draw))
            if "no beard" in text:
                said["bearded" if attributes["beard"] != "none" else attributes["gender"]] += 1
    assert said["man"] > 0 and said["woman"] == 0 and said["bearded"] == 0


def test_a_hat_and_an_expression_are_said_only_of_faces_that_show_them():
    """As for the beard: the sentences added after the phrases speak of the image's own state, never of a bare
    head or a neutral face, and each is said of some faces that show it."""
    said = {"hat": 0, "expression": 0}
    for draw in range(40):
        for attributes, state in _faces(12, seed=draw):
            text = " ".join(_captions(attributes, state, 3, draw))
            expression = {"mouth open": "talking"}.get(state["expression"], state["expression"])
            if "wears a hat" in text:
                assert state["hat"], text
                said["hat"] += 1
            if f"is {expression}." in text:
                assert state["expression"] != "neutral", text
                said["expression"] += 1
            assert " is neutral." not in text, text
    assert said["hat"] > 0 and said["expression"] > 0


def test_each_caption_has_one_or_two_coarse_phrases():
    counts = set()
    for identity, (attributes, state) in enumerate(_faces(30)):
        coarse = coarse_phrases(attributes, state)
        for caption in _captions(attributes, state, 3, identity):
            counts.add(sum(phrase in caption for phrase in coarse))
    assert counts == {1, 2}
