"""Prompt following: worlds made from short prompts, scored by the recaptioner.

    python bench/bench_prompts.py --checkpoint TEXT_WORLD_MODEL --recaptioner RECAPTIONER [--prompts 60]

Each prompt names a room colour and one object with its side ("a teal room with a red
ball on the left"); the model makes the world's first frame from it
(`WorldModel.frame_from_text`, as `reset(options={"prompt": ...})` does) and the
recaptioner, trained on real Rooms frames and their exact captions, reads back the room,
whether the object is in view, and its side. Rows: the prompt rewritten into the caption
style (what the env does), the raw short prompt (no rewriting), and the null text (the
same model unconditioned: chance for this model). A model with a first-frame network
(`worldsim export --first-frame`) is scored twice: its first frames from that network,
and from the dynamics alone, as a model without one makes them. The recaptioner's own
accuracy on real held-out frames (its scores.json, when beside it) is the ceiling of
what it can read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from envs.rooms import OBJECT_COLOUR_NAMES, OBJECT_SHAPES, ROOM_COLOUR_NAMES
from envs.rooms_captions import SIDES, rewrite_prompt
from worldsim.recaptioner import Recaptioner
from worldsim.text import TEXT_DIM, embed_texts
from worldsim.world_model import WorldModel


def prompts(n: int, seed: int) -> list[tuple[str, int, int, int]]:
    """(short prompt, room, object, side) drawn uniformly."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        room, obj, side = int(rng.integers(len(ROOM_COLOUR_NAMES))), int(rng.integers(len(OBJECT_SHAPES))), int(rng.integers(3))
        out.append((f"a {ROOM_COLOUR_NAMES[room]} room with a {OBJECT_COLOUR_NAMES[obj]} {OBJECT_SHAPES[obj]} "
                    f"{SIDES[side]}", room, obj, side))
    return out


def score(model: WorldModel, reader: Recaptioner, cases, texts: np.ndarray, guidance: float, steps: int,
          seed: int, close: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """Attribute accuracy of the first frames made from `texts`; with `close` (whether the
    rewritten caption put the object close by), also split by that distance."""
    hits, frames = [], []
    for k, ((_, r, o, s), text) in enumerate(zip(cases, texts)):
        frame = model.frame_from_text(text, torch.Generator(device=model.device).manual_seed(seed + k), steps=steps,
                                      guidance=guidance)
        frames.append(frame)
        attrs = reader.attributes(np.repeat(frame[None, None], 3, 1))[0]
        hits.append((attrs.room == r, o in attrs.objects, o in attrs.objects and attrs.objects[o][0] == s))
    hits = np.array(hits, float)
    names = ("room", "object_in_view", "object_side")
    result = dict(zip(names, hits.mean(0).tolist()))
    result["attributes"] = float(hits.mean())
    if close is not None:
        for label, rows in (("close", close), ("far", ~close)):
            if rows.any():
                result[label] = {"prompts": int(rows.sum()), **dict(zip(names, hits[rows].mean(0).tolist()))}
    return result, np.stack(frames)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a text-conditioned world model (trained with --text)")
    p.add_argument("--recaptioner", required=True)
    p.add_argument("--prompts", type=int, default=60)
    p.add_argument("--guidance", type=float, nargs="+", default=[0.0, 2.0], help="text guidance weights to score")
    p.add_argument("--steps", type=int, default=16, help="denoising steps for the first frame")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="prompts")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    model, reader = WorldModel.load(args.checkpoint), Recaptioner.load(args.recaptioner)
    cases = prompts(args.prompts, args.seed)
    rewrites = [rewrite_prompt(c[0], seed=args.seed + k) for k, c in enumerate(cases)]
    rewritten = [text for _, text in rewrites]
    close = np.array([attrs.objects[c[2]][1] == 0 for (attrs, _), c in zip(rewrites, cases)])  # distance 0: close by
    rows = {"rewritten": embed_texts(rewritten), "raw prompt": embed_texts([c[0] for c in cases]),
            "null text (unconditional)": np.zeros((len(cases), TEXT_DIM), np.float32)}
    results, sheets = {}, {}
    first_frame = model.first_frame
    for network in (["first-frame network: ", "dynamics alone: "] if first_frame is not None else [""]):
        model.first_frame = None if network.startswith("dynamics") else first_frame
        for w in args.guidance:
            for name, texts in rows.items():
                if name.startswith("null") and w != args.guidance[0]:
                    continue  # guidance does nothing to the null text
                results[f"{network}{name}, guidance {w:g}"], sheets[f"{network}{name} {w:g}"] = score(
                    model, reader, cases, texts, w, args.steps, args.seed, close if name == "rewritten" else None)
    ceiling = None
    scores_file = Path(args.recaptioner).with_name("scores.json")
    if scores_file.exists():
        acc = json.loads(scores_file.read_text())["accuracy"]
        ceiling = {"room": acc["room"], "object_in_view": acc["object_in_view"], "object_side": acc["object_side"]}
    chance = {"room": 1 / len(ROOM_COLOUR_NAMES), "object_side": 1 / 3}
    print(f"{args.checkpoint}: {len(cases)} prompts, first frames read by {args.recaptioner}")
    print(f"{'row':64s} {'room':>6s} {'in view':>8s} {'side':>6s} {'mean':>6s}")
    for name, r in results.items():
        print(f"{name:64s} {r['room']:6.2f} {r['object_in_view']:8.2f} {r['object_side']:6.2f} {r['attributes']:6.2f}")
        for label, words in (("close", "close by"), ("far", "far off")):
            if label in r:
                part = r[label]
                row = f"  ... object {words} ({part['prompts']} prompts)"
                print(f"{row:64s} {part['room']:6.2f} {part['object_in_view']:8.2f} {part['object_side']:6.2f}")
    if ceiling:
        print(f"{'recaptioner on real held-out frames':64s} {ceiling['room']:6.2f} {ceiling['object_in_view']:8.2f} "
              f"{ceiling['object_side']:6.2f}   (in view: of all object slots)")
    print(f"{'chance':64s} {chance['room']:6.2f} {'':8s} {chance['object_side']:6.2f}")
    out = Path(__file__).parent / "results" / f"{args.name}.json"
    out.write_text(json.dumps({"checkpoint": args.checkpoint, "recaptioner": args.recaptioner, "prompts": len(cases),
                               "steps": args.steps, "results": results, "recaptioner_on_real_frames": ceiling,
                               "chance": chance, "examples": [c[0] for c in cases[:8]]}, indent=2))
    import cv2  # a sheet of the first 8 worlds per row, to look at

    sheet = np.concatenate([np.concatenate(list(frames[:8]), 1) for frames in sheets.values()], 0)
    cv2.imwrite(str(out.with_suffix(".png")), cv2.cvtColor(np.kron(sheet, np.ones((2, 2, 1), np.uint8)),
                                                           cv2.COLOR_RGB2BGR))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
