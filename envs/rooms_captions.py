"""Descriptive captions of Rooms clips, the attributes they are made of, and the rewriting
of short user prompts into the same style.

Sora trains on detailed captions written by a captioner (DALL·E 3's recaptioning) and
expands short user prompts into that style before generating. Here the exact captions
come from what the game knows (`info["gt"]`): the room's wall colour, each object in view
with its colour, shape, side and distance, and the camera's motion over the clip. A clip
is described by `Attributes`; `caption` writes the sentences; `rewrite_prompt` parses a
short prompt into Attributes (an offline rule-based rewriter: no language model is
reachable here) and writes the caption the model was trained on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from envs.rooms import OBJECT_COLOUR_NAMES, OBJECT_SHAPES, ROOM_COLOUR_NAMES, ROOM_COLOURS

SIDES = ("on the left", "straight ahead", "on the right")
DISTANCES = ("close by", "across the room")
MOTIONS = ("stands still", "walks forward", "backs up", "turns to the left", "turns to the right",
           "steps to the left", "steps to the right")  # one per Rooms action, in ACTIONS order
MIN_PIXELS = 8  # an object shows when at least this many of its pixels are on screen
NEAR = 2.0  # cells: closer is "close by"
TURN = 30.0  # degrees of net turn over a clip that make it a turn
STILL = 0.3  # cells of net displacement under which the camera stands still
GT_KEYS = ("pose", "object_ids", "objects_xy", "room")  # the ground truth a caption is made from


@dataclass
class Attributes:
    """What a caption says about a clip: `objects` maps an object index (its colour and
    shape, fixed in Rooms) to (side index, distance index) for each object in view."""

    room: int  # ROOM_COLOURS index of the room the camera stands in
    objects: dict[int, tuple[int, int]] = field(default_factory=dict)
    motion: int = 0  # MOTIONS index: the camera's net motion over the clip


def clip_attributes(gt: dict, t: int, clip: int) -> Attributes:
    """The attributes of the clip of frames t .. t + clip from its episode's ground truth
    (arrays over the frames, as `gt/<key>` in a dataset): the room and the objects in view
    at its first frame, and the camera's net motion from its first frame to its last
    (what the footage shows, whichever actions made it)."""
    pose = np.asarray(gt["pose"][t], dtype=np.float64)
    ids = np.asarray(gt["object_ids"][t])
    width = ids.shape[-1]
    objects = {}
    for i in range(len(gt["objects_xy"][t])):
        if (ids == i).sum() < MIN_PIXELS:
            continue
        column = np.nonzero(ids == i)[1].mean()
        side = 0 if column < width / 3 else 2 if column >= 2 * width / 3 else 1
        near = np.linalg.norm(np.asarray(gt["objects_xy"][t][i], dtype=np.float64) - pose[:2]) < NEAR
        objects[i] = (side, 0 if near else 1)
    return Attributes(int(gt["room"][t]), objects, camera_motion(pose, np.asarray(gt["pose"][t + clip], np.float64)))


def camera_motion(start, end, still: float = STILL, turn_deg: float = TURN) -> int:
    """The MOTIONS index of the move from pose `start` to `end` (x, y, yaw): a turn of
    `turn_deg` degrees or more, else the larger of the forward and sideways displacement
    in the starting view, else standing still (under `still`, in the poses' units)."""
    turn = (end[2] - start[2] + np.pi) % (2 * np.pi) - np.pi
    if abs(np.degrees(turn)) >= turn_deg:
        return 3 if turn > 0 else 4
    d = np.asarray(end[:2]) - np.asarray(start[:2])
    forward = d @ np.array([np.cos(start[2]), np.sin(start[2])])
    left = d @ np.array([-np.sin(start[2]), np.cos(start[2])])
    if max(abs(forward), abs(left)) < still:
        return 0
    if abs(forward) >= abs(left):
        return 1 if forward > 0 else 2
    return 5 if left > 0 else 6


def object_name(i: int) -> str:
    return f"{OBJECT_COLOUR_NAMES[i]} {OBJECT_SHAPES[i % len(OBJECT_SHAPES)]}"


def caption(a: Attributes) -> str:
    """Full sentences, in the detailed style of a descriptive captioner."""
    room = ROOM_COLOUR_NAMES[a.room]
    article = "an" if room[0] in "aeiou" else "a"
    text = [f"A first-person view inside {article} {room} room: {room} walls with dark skirting, "
            "a checkered floor and a grey ceiling."]
    if a.objects:
        parts = [f"a {object_name(i)} {DISTANCES[d]}, {SIDES[s]}" for i, (s, d) in sorted(a.objects.items())]
        listing = parts[0] if len(parts) == 1 else "; ".join(parts[:-1]) + "; and " + parts[-1]
        count = "One object is" if len(parts) == 1 else f"{NUMBERS[len(parts)]} objects are"
        text.append(f"{count} in view: {listing}.")
    else:
        text.append("No objects are in view.")
    text.append(f"The camera {MOTIONS[a.motion]}.")
    return " ".join(text)


NUMBERS = ("no", "one", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight")


def _shape(word: str) -> str | None:
    """The Rooms shape a word names, plurals too."""
    for stem in (word, word[:-1] if word.endswith("s") else "", word[:-2] if word.endswith("es") else ""):
        if stem in OBJECT_SHAPES:
            return stem
    return None


# Plain colour words a user may type, as RGB: a room takes the nearest wall tint.
COLOUR_WORDS = {"red": (200, 60, 50), "green": (60, 160, 80), "blue": (60, 80, 200), "yellow": (220, 200, 60),
                "purple": (140, 70, 160), "pink": (220, 130, 150), "orange": (230, 130, 40), "brown": (140, 90, 60),
                "grey": (128, 128, 128), "gray": (128, 128, 128), "white": (240, 240, 240), "cyan": (60, 200, 200),
                "magenta": (220, 60, 220), "olive": (120, 140, 90), "teal": (100, 140, 150)}
SIDE_WORDS = {"left": 0, "ahead": 1, "front": 1, "centre": 1, "center": 1, "middle": 1, "right": 2}
NEAR_WORDS = {"near": 0, "close": 0, "nearby": 0, "far": 1, "across": 1, "distant": 1}
MOTION_WORDS = {"forward": 1, "walk": 1, "walks": 1, "back up": 2, "backs up": 2, "turn left": 3, "turns left": 3,
                "turn right": 4, "turns right": 4, "strafe left": 5, "strafe right": 6}


def _room_of(word: str) -> int:
    names = [n.split()[-1] for n in ROOM_COLOUR_NAMES]
    if word in ROOM_COLOUR_NAMES or word in names:
        return (ROOM_COLOUR_NAMES.index(word) if word in ROOM_COLOUR_NAMES else names.index(word))
    rgb = np.asarray(COLOUR_WORDS[word], dtype=np.float64)
    # Compare hues, not brightness: the wall tints are all muted.
    tints = ROOM_COLOURS / ROOM_COLOURS.sum(1, keepdims=True)
    return int(np.linalg.norm(tints - rgb / rgb.sum(), axis=1).argmin())


SURFACES = ("room", "wall", "walls", "floor")  # a colour word before these is not an object's


def rewrite_prompt(prompt: str, seed: int = 0) -> tuple[Attributes, str]:
    """A short prompt ("a red room with a green box on the left") as Attributes and the
    detailed caption the model was trained on. Rules: the colour word before "room" picks
    the nearest wall tint; each object is named by its colour or its shape (in Rooms each
    colour has one shape; a colour wins over a shape that disagrees with it), and the side
    and distance words after it, up to the next object or the end of the sentence,
    place it; what the prompt leaves open (room colour, side, distance) is drawn with
    `seed`, as a captioner would describe a concrete scene. A caption rewrites to itself."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"expected a non-empty text prompt, got {prompt!r}")
    rng = np.random.default_rng(seed)
    text = prompt.lower()
    motion = 0
    for phrase, m in sorted({**MOTION_WORDS, **{p: i for i, p in enumerate(MOTIONS)}}.items(), key=lambda x: -len(x[0])):
        if re.search(rf"\b{phrase}\b", text):
            motion, text = m, re.sub(rf"\b{phrase}\b", " . ", text)  # its side words are not an object's
            break
    words = re.findall(r"[a-z]+|[.;]", text)
    room = None
    colours = set(COLOUR_WORDS) | {n.split()[-1] for n in ROOM_COLOUR_NAMES}
    for k, w in enumerate(words):
        if w == "room" and k > 0 and words[k - 1] in colours:
            room = _room_of(words[k - 1])
    objects: dict[int, tuple[int, int]] = {}
    k = 0
    while k < len(words):
        w, nxt = words[k], words[k + 1] if k + 1 < len(words) else ""
        index = None
        if w in OBJECT_COLOUR_NAMES[:len(OBJECT_SHAPES)] and nxt not in SURFACES:
            index = OBJECT_COLOUR_NAMES.index(w)
            k += 1 + (_shape(nxt) is not None)
        elif _shape(w):
            index = OBJECT_SHAPES.index(_shape(w))
            k += 1
        else:
            k += 1
            continue
        side, dist = int(rng.integers(3)), int(rng.integers(2))
        for look in words[k:]:
            if look in ".;" or (look in OBJECT_COLOUR_NAMES and look not in SURFACES) or _shape(look):
                break
            side = SIDE_WORDS.get(look, side)
            dist = NEAR_WORDS.get(look, dist)
        objects[index] = (side, dist)
    attrs = Attributes(int(rng.integers(len(ROOM_COLOURS))) if room is None else room, objects, motion)
    return attrs, caption(attrs)
