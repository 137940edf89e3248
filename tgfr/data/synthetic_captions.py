"""MMCelebA-style captions for synthetic faces ("The man has brown hair, freckles, and a mole
above the left lip. He is smiling.").

Every image gets several paraphrased captions. Each fine attribute the image shows (freckles,
scar, mole, eye colour, glasses, earrings, wrinkles, lipstick; see fine_phrases) is mentioned in
at least one of them, so the captions carry what degradation erases; coarse attributes (hair,
face shape, skin, beard, expression) are sprinkled in as MMCelebA's captions do.
"""

from typing import Any

import numpy as np

from tgfr.data.synthetic_faces import covered_marks


def fine_phrases(attributes: dict[str, Any], state: dict[str, Any], version: int) -> dict[str, list[str]]:
    """Fine attribute name -> paraphrases, for the fine attributes this image shows, as the synthetic
    generator's `version` words them: a mark that hair or a beard covers (covered_marks) is left out."""
    covered = covered_marks(attributes, state, version)
    phrases: dict[str, list[str]] = {
        "eye_colour": [f"{attributes['eye_colour']} eyes", f"bright {attributes['eye_colour']} eyes"],
    }
    if attributes["freckles"]:
        phrases["freckles"] = ["freckles", "freckled cheeks"]
    if attributes["scar"] != "none" and "scar" not in covered:
        place = attributes["scar"]
        phrases["scar"] = [f"a scar on the {place}", f"a small scar across the {place}"]
    if attributes["mole"] != "none" and "mole" not in covered:
        phrases["mole"] = [f"a mole {attributes['mole']}", f"a small dark mole {attributes['mole']}"]
    if state["glasses_on"]:
        kind, colour = attributes["glasses"], attributes["glasses_colour"]
        phrases["glasses"] = [f"{kind} {colour} eyeglasses", f"eyeglasses with {kind} {colour} frames"]
    if state["earrings_on"]:
        kind, metal = attributes["earrings"], attributes["earrings_metal"]
        singular = kind[:-1]  # "studs" -> "stud", "hoops" -> "hoop"
        phrases["earrings"] = [f"{metal} {singular} earrings", f"{metal} {kind} in the ears"]
    if attributes["age"] == "old" and "wrinkles" not in covered:
        phrases["wrinkles"] = ["wrinkles on the forehead", "a wrinkled forehead"]
    if attributes["lipstick"]:
        phrases["lipstick"] = ["red lipstick", "red lips"]
    return phrases


def coarse_phrases(attributes: dict[str, Any], state: dict[str, Any]) -> list[str]:
    style = attributes["hair_style"]
    hair = {"short": "short hair", "long": "long hair", "bob": "a bob cut", "bangs": "bangs",
            "curly": "curly hair", "bald": "a bald head"}[style]
    shape = attributes["face_shape"]
    phrases = [f"{'an' if shape == 'oval' else 'a'} {shape} face", f"{attributes['skin']} skin",
               f"{attributes['brows']} eyebrows", f"a {attributes['nose']} nose"]
    if not state["hat"] and style != "bald":
        phrases += [f"{attributes['hair_colour']} hair", hair]
    elif not state["hat"]:
        phrases.append(hair)
    if attributes["beard"] != "none":
        phrases.append(f"a {attributes['beard']}")
    if attributes["moustache"]:
        phrases.append("a mustache")
    return phrases


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + (", and " if len(items) > 2 else " and ") + items[-1]


def make_captions(attributes: dict[str, Any], state: dict[str, Any], count: int, rng: np.random.Generator,
                  version: int) -> list[str]:
    """`count` captions of one image, as the synthetic generator's `version` writes them; every fine
    attribute of fine_phrases(attributes, state, version) is in at least one."""
    man = attributes["gender"] == "man"
    subjects = ["The man", "This man", "The person", "This person"] if man else \
               ["The woman", "This woman", "The person", "This person"]
    pronoun = "He" if man else "She"
    fine = fine_phrases(attributes, state, version)
    coarse = coarse_phrases(attributes, state)
    names = [list(fine)[i] for i in rng.permutation(len(fine))]
    assigned: list[list[str]] = [[] for _ in range(count)]
    for i, name in enumerate(names):
        assigned[i % count].append(name)
    captions = []
    for slot in assigned:
        if rng.random() < 0.5:  # one more fine detail, as a second description would repeat
            slot = slot + [names[int(rng.integers(len(names)))]]
        chosen = [fine[name][int(rng.integers(2))] for name in dict.fromkeys(slot)]
        chosen += [coarse[i] for i in rng.choice(len(coarse), size=int(rng.integers(1, 3)), replace=False)]
        chosen = [chosen[i] for i in rng.permutation(len(chosen))]
        sentence = f"{subjects[int(rng.integers(len(subjects)))]} has {_join(chosen)}."
        if state["expression"] != "neutral" and rng.random() < 0.6:
            sentence += f" {pronoun} is {state['expression'] if state['expression'] != 'mouth open' else 'talking'}."
        if state["hat"] and rng.random() < 0.5:
            sentence += f" {pronoun} wears a hat."
        if attributes["beard"] == "none" and man and rng.random() < 0.3:
            sentence += f" {pronoun} has no beard."
        captions.append(sentence)
    return captions
