"""Tokenizer quality, compression and speed on held-out (test split) episodes.

    python bench/bench_tokenizer.py --checkpoint worldsim/checkpoints/rooms_tokenizer.safetensors --data data/rooms

Prints reconstruction PSNR/SSIM beside two baselines: a bicubic down/up-resize that
keeps the same number of elements as the latent (what plain resizing achieves at that
compression), and copy-last-frame (the next-frame score a dynamics model must beat).
Also compression ratios and encode/decode frames/s on this machine's CPU (and GPU if any).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from worldsim.dataset import episode_paths, read_episode
from worldsim.tokenizer import Tokenizer, psnr, psnr_pooled, ssim


def held_out_frames(data: str, max_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames of the test split, and for copy-last-frame the frame before each."""
    frames, previous = [], []
    for path in episode_paths(data, "test"):
        f = read_episode(path).frames
        frames.append(f[1:])
        previous.append(f[:-1])
        if sum(len(x) for x in frames) >= max_frames:
            break
    if not frames:
        raise SystemExit(f"{data} has no test episodes")
    return np.concatenate(frames)[:max_frames], np.concatenate(previous)[:max_frames]


def resize_baseline(frames: np.ndarray, elements: int) -> np.ndarray:
    h, w = frames.shape[1:3]
    side = max(1, int(math.sqrt(elements / 3)))
    return np.stack([cv2.resize(cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA), (w, h),
                                interpolation=cv2.INTER_CUBIC) for f in frames])


def speed(model: Tokenizer, frames: np.ndarray, device: str, batch: int = 64, repeats: int = 3) -> tuple[float, float]:
    model = model.to(device)
    x = torch.from_numpy(frames[:batch])[:, None].to(device)
    with torch.no_grad():
        z = model.encode(x)
        model.decode(z)  # warm-up
        times = {"enc": [], "dec": []}
        for _ in range(repeats):
            t0 = time.perf_counter()
            z = model.encode(x)
            torch.cuda.synchronize() if device == "cuda" else None
            t1 = time.perf_counter()
            model.decode(z)
            torch.cuda.synchronize() if device == "cuda" else None
            times["enc"].append(t1 - t0)
            times["dec"].append(time.perf_counter() - t1)
    return batch / min(times["enc"]), batch / min(times["dec"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default="worldsim/checkpoints/rooms_tokenizer.safetensors")
    parser.add_argument("--data", default="data/rooms", help="dataset whose test split is scored")
    parser.add_argument("--frames", type=int, default=1000, help="held-out frames to score")
    parser.add_argument("--name", default=None, help="label for the results file")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = Tokenizer.load(args.checkpoint)
    frames, previous = held_out_frames(args.data, args.frames)
    recon = []
    with torch.no_grad():
        for s in range(0, len(frames), 128):
            recon.append(model.decode(model.encode(torch.from_numpy(frames[s:s + 128])[:, None]))[:, 0].numpy())
    recon = np.concatenate(recon)
    latent_elements = int(np.prod(model.cfg.latent_shape))
    frame_elements = int(np.prod(frames.shape[1:]))
    resized = resize_baseline(frames, int(latent_elements))
    r = {
        "checkpoint": args.checkpoint, "data": args.data, "held_out_frames": len(frames),
        "latent_shape": list(model.cfg.latent_shape),
        "psnr_db": float(psnr(frames, recon).mean()), "psnr_db_pooled_mse": psnr_pooled(frames, recon),
        "ssim": float(ssim(frames, recon).mean()),
        "baseline_resize_same_elements_psnr_db": float(psnr(frames, resized).mean()),
        "baseline_resize_same_elements_psnr_db_pooled_mse": psnr_pooled(frames, resized),
        "baseline_resize_same_elements_ssim": float(ssim(frames, resized).mean()),
        "copy_last_frame_psnr_db_pooled_mse": psnr_pooled(frames, previous),
        "copy_last_frame_ssim": float(ssim(frames, previous).mean()),
        "compression_elements": frame_elements / latent_elements,
        "compression_bytes_fp16_latent": frame_elements / (2 * latent_elements),
        "compression_bytes_fp32_latent": frame_elements / (4 * latent_elements),
    }
    r["cpu_encode_fps"], r["cpu_decode_fps"] = speed(model, frames, "cpu")
    if torch.cuda.is_available():
        r["gpu_encode_fps"], r["gpu_decode_fps"] = speed(model, frames, "cuda", batch=256)
    print(f"{'figure':<40} {'value':>10}")
    for key, value in r.items():
        print(f"{key:<40} {value:>10.3f}" if isinstance(value, float) else f"{key:<40} {value!s:>10}")
    out = Path(__file__).parent / "results" / f"tokenizer_{args.name or Path(args.data).name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(r, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
