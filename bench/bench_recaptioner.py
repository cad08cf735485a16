"""The recaptioner's attribute accuracy on held-out clips, against their exact captions.

    python bench/bench_recaptioner.py --checkpoint worldsim/checkpoints/rooms_recaptioner.safetensors --data DIR [--split test]

DIR is a Rooms dataset collected with `--env-kwargs '{"world_seed": null}'` (a new map per
episode); its test split holds maps the recaptioner never saw (a dataset collected with
other seeds is new throughout: score any split of it). Prints the accuracy of each
attribute a caption states beside always guessing its most common value, and the share
of clips whose whole caption is right.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from training.train_recaptioner import Clips, attribute_accuracy
from worldsim.recaptioner import Recaptioner


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--clips", type=int, default=4000)
    p.add_argument("--name", default="recaptioner_rooms")
    args = p.parse_args()

    model = Recaptioner.load(args.checkpoint)
    clips = Clips(args.data, args.split, model.cfg.clip, model.cfg.objects)
    rows = np.random.default_rng(0).permutation(len(clips))[:args.clips]
    scores = attribute_accuracy(model, clips, rows)
    print(f"{args.checkpoint} on {args.data} ({args.split} split, {scores['clips']} clips, "
          f"{scores['objects_in_view']} objects in view)")
    print(f"{'attribute':16s} {'recaptioner':>11s} {'majority':>9s}")
    for name, acc in scores["accuracy"].items():
        base = scores["majority_baseline"].get(name)
        print(f"{name:16s} {acc:11.3f} {'' if base is None else f'{base:9.3f}'}")
    print(f"mean of room, motion, in view, side, distance: {scores['mean_attribute_accuracy']:.3f}")
    out = Path(__file__).parent / "results" / f"{args.name}.json"
    out.write_text(json.dumps({"checkpoint": args.checkpoint, "data": args.data, "split": args.split, **scores},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
