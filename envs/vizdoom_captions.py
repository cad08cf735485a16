"""Descriptive captions of ViZDoom clips, from what the engine knows.

As envs/rooms_captions.py does for Rooms: each clip's caption says what is in view at
its first frame (monsters, projectiles and items, by the engine's labels: what each is,
its side of the screen, whether it is close, and whether a projectile closes in on the
player over the clip) and how the player moved over the clip, in full sentences, as a
descriptive captioner writes them. Made from `info["gt"]` (`pose`, `objects`), so any
episode collected from a `worldsim/Vizdoom-*` env can be captioned exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from envs.rooms_captions import NUMBERS, SIDES, camera_motion
from envs.vizdoom_env import OBJECT_CLASSES

# What each actor is called in a caption, and which kind of thing it is.
WORDS = {
    "DoomImp": ("imp", "monster"), "Zombieman": ("zombieman", "monster"), "ShotgunGuy": ("shotgun guy", "monster"),
    "ChaingunGuy": ("chaingunner", "monster"), "Demon": ("pink demon", "monster"), "Spectre": ("spectre", "monster"),
    "Cacodemon": ("cacodemon", "monster"), "LostSoul": ("lost soul", "monster"), "HellKnight": ("hell knight", "monster"),
    "BaronOfHell": ("baron of hell", "monster"), "Revenant": ("revenant", "monster"), "Fatso": ("mancubus", "monster"),
    "Arachnotron": ("arachnotron", "monster"),
    "DoomImpBall": ("fireball", "projectile"), "CacodemonBall": ("ball of lightning", "projectile"),
    "BaronBall": ("green fireball", "projectile"), "RevenantTracer": ("homing rocket", "projectile"),
    "FatShot": ("fireball", "projectile"), "ArachnotronPlasma": ("plasma bolt", "projectile"),
    "Rocket": ("rocket", "projectile"), "PlasmaBall": ("plasma bolt", "projectile"),
}
ITEM = ("item", "item")  # everything else in OBJECT_CLASSES but the player
NEAR = 256.0  # map units: closer to the player is "close by"
STILL = 16.0  # map units of net displacement under which the player stands still
TURN = 30.0  # degrees of net turn over a clip that make it a turn
CLOSING = 32.0  # map units a projectile must come nearer over the clip to be "flying at the player"
MOTIONS = ("stands still", "moves forward", "backs up", "turns to the left", "turns to the right",
           "strafes to the left", "strafes to the right")  # in the order of envs.rooms_captions.MOTIONS
GT_KEYS = ("pose", "objects")  # the ground truth a caption is made from


@dataclass
class Thing:
    name: str  # what the caption calls it ("imp", "fireball")
    kind: str  # monster | projectile | item
    side: int  # SIDES index, from its screen box
    near: bool
    closing: bool = False  # a projectile that comes nearer the player over the clip


@dataclass
class Attributes:
    things: list[Thing] = field(default_factory=list)
    motion: int = 0  # MOTIONS index


def clip_attributes(gt: dict, t: int, clip: int) -> Attributes:
    """The attributes of frames t .. t + clip of an episode (`gt/<key>` arrays over its
    frames): the labelled things in view at frame t, and the player's motion to t + clip."""
    pose, objects = np.asarray(gt["pose"], np.float64), np.asarray(gt["objects"], np.float64)
    if objects.shape[-1] < 9:
        raise ValueError(f"objects of {objects.shape[-1]} columns hold no class; episodes recorded before classes "
                         "were kept cannot be captioned: collect them again")
    things = []
    for row in objects[t]:
        valid, object_id, x, y, box_x, _, box_w = row[:7]
        name = OBJECT_CLASSES[int(row[8])]
        if not valid or name == "DoomPlayer":
            continue
        word, kind = WORDS.get(name, ITEM)
        centre = box_x + box_w / 2
        side = 0 if centre < 1 / 3 else 2 if centre >= 2 / 3 else 1
        distance = np.hypot(x - pose[t, 0], y - pose[t, 1])
        closing = False
        if kind == "projectile":  # where the same projectile is last seen within the clip
            later = [(u, r) for u in range(t + 1, min(t + clip, len(objects) - 1) + 1) for r in objects[u]
                     if r[0] and r[1] == object_id]
            if later:
                u, r = later[-1]
                closing = distance - np.hypot(r[2] - pose[u, 0], r[3] - pose[u, 1]) >= CLOSING
        things.append(Thing(word, kind, side, bool(distance < NEAR), closing))
    return Attributes(things, player_motion(pose[t], pose[min(t + clip, len(pose) - 1)]))


def player_motion(start, end) -> int:
    """The MOTIONS index of the move from pose `start` to `end` (x, y, angle radians), as
    Rooms captions judge it, in map units."""
    return camera_motion(start, end, still=STILL, turn_deg=TURN)


def _number(n: int) -> str:
    return NUMBERS[n].lower() if n < len(NUMBERS) else str(n)


def _listing(things: list[Thing]) -> str:
    groups = {}
    for th in things:
        groups.setdefault(th.name, []).append(th)
    parts = []
    for name, group in groups.items():
        where = ", ".join(sorted({f"{'close by' if th.near else 'farther off'} {SIDES[th.side]}" for th in group}))
        closing = sum(th.closing for th in group)
        flying = ("" if not closing else " flying at the player" if closing == len(group) == 1
                  else f", {'both' if closing == 2 else 'all'} flying at the player" if closing == len(group)
                  else f", {_number(closing)} of them flying at the player")
        count = "a" if len(group) == 1 else _number(len(group))
        parts.append(f"{count} {name}{'' if len(group) == 1 else 's'}{flying} ({where})")
    return parts[0] if len(parts) == 1 else "; ".join(parts[:-1]) + "; and " + parts[-1]


def caption(a: Attributes) -> str:
    """Full sentences, in the detailed style of a descriptive captioner."""
    text = ["A first-person view in Doom."]
    for kind, plural in (("monster", "monsters"), ("projectile", "projectiles"), ("item", "items")):
        found = [th for th in a.things if th.kind == kind]
        if found:
            text.append(f"{plural.capitalize()} in view: {_listing(found)}.")
    if not a.things:
        text.append("Nothing moves in view.")
    text.append(f"The player {MOTIONS[a.motion]}.")
    return " ".join(text)
