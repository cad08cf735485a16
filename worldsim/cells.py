"""What each cell of a top-down grid world's view holds, read from pixels (Crafter).

A replay's PSNR rewards a dream that draws the average of what could be on screen, and
in Crafter that average is open grass: a dream that turns the world into grass beats one
that draws sand and water a cell off. So a grid world's dream is also scored by what it
draws. A small classifier (`CellReader`), trained on real frames labelled by the world
map of `info["gt"]` (and on the tokenizer's reconstructions of them, which look as a
dream does), reads the material or creature in each cell of a frame's view. `cell_scores`
then compares what it reads in the dream with what it reads in the real frame:

- agreement: the share of cells the dream draws as the real frame shows them;
- mix distance: the total variation between the dream's and the real frames' shares of
  each class, pooled over windows (a dream can draw the right mix in the wrong cells;
  a grass-only dream cannot);
- not grass: the share of cells drawn as anything but grass.

Crafter draws a view of 9 x 7 cells of `unit` pixels, square and centred, from the top
of the frame (the inventory below), the player in the middle cell; the player's own
cell is left out of every score (it is always the player).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from envs.crafter_env import SEMANTIC_IDS
from worldsim.dataset import episode_paths, read_episode

VIEW = (9, 7)  # (columns, rows) of world cells in Crafter's frame


def view_geometry(frame_hw, view=VIEW) -> tuple[int, int]:
    """(unit, border) of the view's square cells in a frame of `frame_hw`, as crafter draws them."""
    unit = frame_hw[1] // view[0]
    return unit, (frame_hw[1] - unit * view[0]) // 2


def cell_patches(frames: np.ndarray, view=VIEW) -> np.ndarray:
    """uint8 frames (..., H, W, 3) -> their view cells (..., rows, cols, unit, unit, 3)."""
    cols, rows = view
    unit, border = view_geometry(frames.shape[-3:-1], view)
    grid = frames[..., border:border + rows * unit, border:border + cols * unit, :]
    grid = grid.reshape(*frames.shape[:-3], rows, unit, cols, unit, 3)
    return np.moveaxis(grid, -4, -3)  # (..., rows, cols, unit, unit, 3)


def view_labels(semantic: np.ndarray, player_pos: np.ndarray, view=VIEW) -> np.ndarray:
    """The world map's id of each view cell: semantic (..., X, Y) indexed [x, y] and the
    player's cell (..., 2) -> (..., rows, cols); 0 ("none") outside the world."""
    cols, rows = view
    sem = semantic.reshape(-1, *semantic.shape[-2:])
    pos = player_pos.reshape(-1, 2)
    out = np.zeros((len(sem), rows, cols), np.int64)
    dx, dy = np.meshgrid(np.arange(cols) - cols // 2, np.arange(rows) - rows // 2)
    for i, (m, (x, y)) in enumerate(zip(sem, pos)):
        wx, wy = x + dx, y + dy
        inside = (wx >= 0) & (wx < m.shape[0]) & (wy >= 0) & (wy < m.shape[1])
        out[i][inside] = m[wx[inside], wy[inside]]
    return out.reshape(*semantic.shape[:-2], rows, cols)


def off_player(view=VIEW) -> np.ndarray:
    """(rows, cols) mask of every view cell but the player's."""
    cols, rows = view
    mask = np.ones((rows, cols), bool)
    mask[rows // 2, cols // 2] = False
    return mask


class CellReader(nn.Module):
    """A two-layer classifier of one cell's pixels into the ids of `names`."""

    def __init__(self, unit: int, names=SEMANTIC_IDS, width: int = 128, view=VIEW):
        super().__init__()
        self.view, self.unit, self.names = tuple(view), unit, tuple(names)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(unit * unit * 3, width), nn.ReLU(),
                                 nn.Linear(width, len(self.names)))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.net(patches.float() / 255.0)

    @torch.no_grad()
    def read(self, frames: np.ndarray, batch: int = 65536) -> np.ndarray:
        """uint8 frames (..., H, W, 3) -> the class read in each view cell (..., rows, cols)."""
        cells = cell_patches(frames, self.view)
        flat = torch.from_numpy(np.ascontiguousarray(cells.reshape(-1, *cells.shape[-3:])))
        ids = [self(flat[i:i + batch]).argmax(-1) for i in range(0, len(flat), batch)]
        return torch.cat(ids or [torch.zeros(0, dtype=torch.long)]).numpy().reshape(cells.shape[:-3])


def fit_cell_reader(frames: np.ndarray, labels: np.ndarray, names=SEMANTIC_IDS, steps: int = 1500, batch: int = 512,
                    seed: int = 0, view=VIEW) -> CellReader:
    """A `CellReader` trained on uint8 frames (N, H, W, 3) and their view labels (N, rows,
    cols); each class weighs by the square root of its rarity, so that the rare ones
    (water, trees, creatures) are not lost to grass."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    unit, _ = view_geometry(frames.shape[1:3], view)
    cells = cell_patches(frames, view)
    x = torch.from_numpy(np.ascontiguousarray(cells.reshape(-1, unit, unit, 3)))
    y = torch.from_numpy(labels.reshape(-1).astype(np.int64))
    if len(x) != len(y):
        raise ValueError(f"expected one label per view cell: {len(x)} cells, {len(y)} labels")
    counts = torch.bincount(y, minlength=len(names)).float()
    weight = torch.where(counts > 0, (counts.sum() / counts.clamp(min=1)).sqrt(), torch.zeros(()))
    reader = CellReader(unit, names, view=view)
    opt = torch.optim.Adam(reader.parameters(), lr=3e-3)
    loss_of = nn.CrossEntropyLoss(weight=weight / weight[y].mean())
    for _ in range(steps):
        i = torch.randint(len(x), (batch,), generator=gen)
        loss = loss_of(reader(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return reader.eval()


def cell_scores(read_pred: np.ndarray, read_real: np.ndarray, names=SEMANTIC_IDS, view=VIEW) -> dict:
    """Scores of the cells read in predicted frames against those read in the real ones,
    both (N, rows, cols), the player's cell left out: agreement, the mix distance (total
    variation of the pooled class shares, 0 to 1), and the share not grass in each."""
    keep, grass = off_player(view), list(names).index("grass")
    p, r = read_pred[:, keep].reshape(-1), read_real[:, keep].reshape(-1)
    share = lambda ids: np.bincount(ids, minlength=len(names)) / max(len(ids), 1)  # noqa: E731
    return {"agree": float((p == r).mean()), "mix_distance": float(0.5 * np.abs(share(p) - share(r)).sum()),
            "not_grass": float((p != grass).mean()), "real_not_grass": float((r != grass).mean())}


def labelled_frames(data: str, split: str = "train", count: int = 4000, seed: int = 0):
    """Up to `count` frames of `split` drawn evenly from its episodes, with their view
    labels: (frames (N, H, W, 3) uint8, labels (N, rows, cols)); the episodes need
    gt/semantic and gt/player_pos (worldsim/Crafter-v0 records both)."""
    paths = episode_paths(data, split)
    if not paths:
        raise ValueError(f"{data}: no {split} episodes to read cells from")
    per = max(count // len(paths), 1)
    rng, frames, labels = np.random.default_rng(seed), [], []
    for path in paths:
        e = read_episode(path)
        if not {"semantic", "player_pos"} <= set(e.gt):
            raise ValueError(f"{path}: the cell reader needs gt/semantic and gt/player_pos (a Crafter dataset); "
                             f"it has {sorted(e.gt)}")
        t = rng.choice(len(e.frames), min(per, len(e.frames)), replace=False)
        frames.append(e.frames[t])
        labels.append(view_labels(e.gt["semantic"][t], e.gt["player_pos"][t]))
        if sum(map(len, frames)) >= count:
            break
    return np.concatenate(frames)[:count], np.concatenate(labels)[:count]


def reconstructions(model, frames: np.ndarray, chunk: int = 256) -> np.ndarray:
    """The world model's tokenizer round trip of uint8 frames (N, H, W, 3)."""
    with torch.no_grad():
        return np.concatenate([model.decode(model.encode(frames[None, i:i + chunk]))[0].cpu().numpy()
                               for i in range(0, len(frames), chunk)])


def fit_for_model(model, data: str, count: int = 4000, seed: int = 0) -> tuple[CellReader, dict]:
    """A `CellReader` for `model`'s dreams, fitted on `count` real frames of `data`'s train
    split and their reconstructions by the model's tokenizer; and its accuracy on the val
    split's real frames and reconstructions, the player's cell left out."""
    frames, labels = labelled_frames(data, "train", count, seed)
    reader = fit_cell_reader(np.concatenate([frames, reconstructions(model, frames)]), np.concatenate([labels, labels]),
                             seed=seed)
    frames, labels = labelled_frames(data, "val", count // 4, seed)
    keep = off_player(reader.view)
    accuracy = {name: float((reader.read(f)[:, keep] == labels[:, keep]).mean())
                for name, f in (("real", frames), ("reconstructed", reconstructions(model, frames)))}
    return reader, accuracy
