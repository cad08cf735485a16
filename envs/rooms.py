"""Rooms: the built-in first-person world, rendered with numpy alone.

A grid of rooms joined by doorways, seen through a Wolfenstein-style raycaster:
textured walls coloured per room, a checkered floor, and billboard objects of
distinct colours and shapes standing on it. The agent collects objects by walking
into them. Every frame comes with exact ground truth (pose, object positions,
visibility and screen column, per-column depth), which the probes score against.

Conventions: the map is a grid `walls[y, x]` (True = wall); the agent's pose is
(x, y, yaw) in cell units and radians, yaw 0 looking along +x, and yaw grows when
turning left (counter-clockwise in the map seen from above, with y up).
Yaw is kept as an integer count of turn steps, so turning a full circle returns
the exact first frame.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

ACTIONS = ("NOOP", "FORWARD", "BACK", "TURN_LEFT", "TURN_RIGHT", "STRAFE_LEFT", "STRAFE_RIGHT")

# Saturated, full-bright object colours (never used on walls, so a colour names an object).
OBJECT_COLOURS = np.array(
    [[230, 40, 40], [40, 200, 60], [50, 90, 240], [240, 220, 40],
     [220, 60, 220], [40, 220, 220], [250, 140, 20], [250, 250, 250]], dtype=np.uint8)
OBJECT_SHAPES = ("ball", "box", "cone", "pillar", "diamond", "cross")
OBJECT_COLOUR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "white")

# Muted wall tints, one per room.
ROOM_COLOURS = np.array(
    [[150, 110, 90], [90, 130, 110], [110, 110, 150], [150, 140, 100], [130, 100, 130],
     [100, 140, 150], [140, 120, 120], [120, 140, 90], [110, 100, 90]], dtype=np.float32)
ROOM_COLOUR_NAMES = ("terracotta", "sage", "slate blue", "ochre", "mauve", "teal", "dusty rose", "olive", "umber")
CEILING = np.array([70, 70, 80], dtype=np.float32)
FLOOR_TONES = np.array([[105, 95, 85], [75, 68, 60]], dtype=np.float32)


def _shape_masks(n: int = 16) -> dict[str, np.ndarray]:
    """Boolean n x n masks for each billboard shape (rows top to bottom)."""
    v, u = np.mgrid[0:n, 0:n] / (n - 1) * 2 - 1  # v: -1 top .. 1 bottom, u: -1 left .. 1 right
    return {
        "ball": u ** 2 + v ** 2 <= 1.0,
        "box": (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8),
        "cone": np.abs(u) <= (v + 1) / 2,
        "pillar": np.abs(u) <= 0.35,
        "diamond": np.abs(u) + np.abs(v) <= 1.0,
        "cross": (np.abs(u) <= 0.3) | (np.abs(v) <= 0.3),
    }


SHAPE_MASKS = _shape_masks()


def depth_image(gt: dict, t: int, fov_deg: float = 60.0) -> np.ndarray:
    """The perpendicular depth (H, W) of every pixel of frame t, from the frame's ground
    truth (a `RoomsEnv` gt stacked over an episode), as the raycaster drew it: walls at
    their column's depth, the floor at the distance its row looks down to, billboards at
    their own; inf on the ceiling, which shows no place (its shade depends on the row
    alone). Depth is along the view axis, in cells."""
    ids = np.asarray(gt["object_ids"][t])
    height, width = ids.shape
    focal = width / 2 / np.tan(np.radians(fov_deg) / 2)
    row_y = (np.arange(height) + 0.5 - height / 2)[:, None]  # pixel rows relative to the horizon
    columns = np.asarray(gt["depth"][t], np.float64)[None, :]
    wall = np.abs(row_y) < 0.5 * focal / np.maximum(columns, 1e-6)
    floor = 0.5 * focal / np.maximum(row_y, 1e-6)  # camera height 0.5
    depth = np.where(wall, columns, np.where(row_y > 0, floor, np.inf))
    x, y, yaw = np.asarray(gt["pose"][t], np.float64)
    for i in np.unique(ids[ids >= 0]):
        depth[ids == i] = (np.asarray(gt["objects_xy"][t][i]) - (x, y)) @ (np.cos(yaw), np.sin(yaw))
    return depth


def generate_world(rng: np.random.Generator, rooms: int = 3, room_size: int = 5, n_objects: int = 6):
    """A rooms x rooms grid of square rooms, joined through doorways.

    Doorways follow a random spanning tree (every room is reachable) plus a few extra
    loops; a room may hold a pillar. Returns (walls, room_id, objects_xy, start_pose).
    """
    side = rooms * (room_size + 1) + 1
    walls = np.ones((side, side), dtype=bool)
    room_id = np.full((side, side), -1, dtype=np.int64)
    colour_order = rng.permutation(len(ROOM_COLOURS))
    for ry in range(rooms):
        for rx in range(rooms):
            y0, x0 = ry * (room_size + 1) + 1, rx * (room_size + 1) + 1
            walls[y0:y0 + room_size, x0:x0 + room_size] = False
            room_id[y0:y0 + room_size, x0:x0 + room_size] = colour_order[(ry * rooms + rx) % len(ROOM_COLOURS)]

    # Doorways: randomised DFS spanning tree over rooms, then extra doors for loops.
    edges = [((ry, rx), (ry, rx + 1)) for ry in range(rooms) for rx in range(rooms - 1)]
    edges += [((ry, rx), (ry + 1, rx)) for ry in range(rooms - 1) for rx in range(rooms)]
    parent = {(ry, rx): (ry, rx) for ry in range(rooms) for rx in range(rooms)}

    def find(a):
        while parent[a] != a:
            a = parent[a]
        return a

    doors = []
    for i in rng.permutation(len(edges)):
        a, b = edges[i]
        if find(a) != find(b):
            parent[find(a)] = find(b)
            doors.append(edges[i])
        elif rng.random() < 0.3:
            doors.append(edges[i])
    for (ay, ax), (by, bx) in doors:
        offset = 1 + int(rng.integers(room_size))
        if ay == by:  # east-west neighbours: door in the vertical wall between them
            x, y = bx * (room_size + 1), ay * (room_size + 1) + offset
        else:
            x, y = ax * (room_size + 1) + offset, by * (room_size + 1)
        walls[y, x] = False
        room_id[y, x] = room_id[y, x - 1] if ay == by else room_id[y - 1, x]

    # A pillar in some rooms, away from the doorways' rows and columns, as a landmark.
    for ry in range(rooms):
        for rx in range(rooms):
            if rng.random() < 0.5:
                y = ry * (room_size + 1) + 2 + int(rng.integers(room_size - 2))
                x = rx * (room_size + 1) + 2 + int(rng.integers(room_size - 2))
                walls[y, x] = True

    free = np.argwhere(~walls & (room_id >= 0))
    picks = rng.choice(len(free), size=n_objects + 1, replace=False)
    cells = free[picks]
    objects_xy = cells[:n_objects, ::-1].astype(np.float64) + 0.5  # (x, y) cell centres
    start_xy = cells[n_objects, ::-1].astype(np.float64) + 0.5
    return walls, room_id, objects_xy, start_xy


class RoomsEnv(gym.Env):
    """First-person rooms world: walk a grid of rooms and collect every object.

    ## Description
    A `rooms` x `rooms` grid of square rooms joined by doorways (a random spanning tree
    plus a few loops), walls tinted per room, billboard objects of distinct colours and
    shapes on a checkered floor, seen through a raycaster. Made to be learnt by a world
    model: every frame comes with exact ground truth, and turning a full circle returns
    the exact first frame.

    ## Action Space
    `Discrete(7)`, named in `env.action_meanings`:

    | 0 NOOP | 1 FORWARD | 2 BACK | 3 TURN_LEFT | 4 TURN_RIGHT | 5 STRAFE_LEFT | 6 STRAFE_RIGHT |

    Moves go `move_step` cells (a wall stops the move along each axis on its own, so moves
    slide along walls); turns go 360 / `turn_steps` degrees.

    ## Observation Space
    `Box(0, 255, (height, width, 3), uint8)`: the RGB view. `info["gt"]` holds the ground
    truth: `pose` (x, y, yaw in cells and radians), `objects_xy`, `objects_alive`,
    `objects_in_view`, `objects_column` (screen column), `depth` (per column),
    `object_ids` (per pixel, -1 for none), `room` (index into `ROOM_COLOURS`).

    ## Rewards
    +1 for each object reached (walked within 0.5 cells of); 0 otherwise. With
    `collectible=False` objects stay forever and nothing is paid.

    ## Starting State
    A random free cell and yaw, drawn from the reset seed, on the map of `world_seed`
    (or, with `world_seed=None`, on a map drawn from the reset seed).

    ## Episode End
    Terminated when every object is collected; truncated at `max_steps`. A step after the
    end raises.

    ## Arguments
        size: (height, width) of the RGB observation (at least 8x8).
        world_seed: an int fixes the map (a game level, the default 0); None draws a new
            map from the reset seed on every reset.
        rooms, room_size, n_objects: map generation (n_objects at most 8).
        turn_steps: turn actions per full circle.
        move_step: distance per forward/back/strafe step, in cells.
        fov_deg: horizontal field of view.
        max_steps: truncation limit.
        collectible: objects vanish with +1 reward when reached; False keeps them
            forever (used by persistence probes).
        render_mode: "rgb_array" or "human" (a window).

    ## Version History
    * v0: the first and only version.
    """

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": 15}

    def __init__(self, size=(64, 64), world_seed: int | None = 0, rooms: int = 3, room_size: int = 5,
                 n_objects: int = 6, turn_steps: int = 24, move_step: float = 0.25, fov_deg: float = 60.0,
                 max_steps: int = 500, collectible: bool = True, render_mode: str | None = None):
        self.height, self.width = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
        if self.height < 8 or self.width < 8:
            raise ValueError(f"size must be at least 8x8 pixels, got {self.height}x{self.width}")
        if n_objects > len(OBJECT_COLOURS):
            raise ValueError(f"n_objects must be at most {len(OBJECT_COLOURS)}, got {n_objects}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.world_seed, self.rooms, self.room_size, self.n_objects = world_seed, rooms, room_size, n_objects
        self.turn_steps, self.move_step, self.max_steps = turn_steps, move_step, max_steps
        self.collectible, self.render_mode = collectible, render_mode
        self.action_meanings = ACTIONS
        self.action_space = gym.spaces.Discrete(len(ACTIONS))
        self.observation_space = gym.spaces.Box(0, 255, (self.height, self.width, 3), np.uint8)
        self.object_colours = OBJECT_COLOURS[:n_objects]
        self.object_shapes = tuple(OBJECT_SHAPES[i % len(OBJECT_SHAPES)] for i in range(n_objects))
        self.radius = 0.2

        # Camera constants that depend only on the frame size.
        self.half_fov = np.tan(np.radians(fov_deg) / 2)
        self.focal = self.width / 2 / self.half_fov  # pixels per unit at distance 1
        self.cam_x = (2 * (np.arange(self.width) + 0.5) / self.width - 1)  # -1 left .. 1 right
        rows = np.arange(self.height) + 0.5 - self.height / 2
        self.row_y = rows[:, None]  # pixel rows relative to the horizon
        below = rows > 0
        self.floor_rows = np.nonzero(below)[0]
        self.floor_dist = (0.5 * self.focal / rows[below])[:, None]  # camera height 0.5
        shade = np.clip(1.0 - np.abs(rows) / self.height, 0.5, 1.0)[:, None, None]
        self.ceiling = np.broadcast_to(CEILING * shade, (self.height, self.width, 3)).astype(np.float32)

        self._world_key = None
        self._steps, self._ended = None, False
        if world_seed is not None:
            self._build_world(np.random.default_rng(world_seed))

    # ------------------------------------------------------------------ world
    def _build_world(self, rng):
        self.walls, self.room_id, self.objects_home, self.start_xy = generate_world(
            rng, self.rooms, self.room_size, self.n_objects)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if self.world_seed is None:
            self._build_world(self.np_random)
        # Start at the map's start cell, or anywhere free when the map is fixed, so
        # episodes see different views; yaw on the turn grid keeps circles exact.
        free = np.argwhere(~self.walls)
        cell = free[self.np_random.integers(len(free))]
        occupied = {tuple(np.floor(xy).astype(int)) for xy in self.objects_home}
        while tuple(cell[::-1]) in occupied:
            cell = free[self.np_random.integers(len(free))]
        self.pos = cell[::-1].astype(np.float64) + 0.5
        self.yaw_index = int(self.np_random.integers(self.turn_steps))
        self.objects = self.objects_home.copy()
        self.alive = np.ones(self.n_objects, dtype=bool)
        self._steps, self._ended = 0, False
        frame, info = self._observe()
        if self.render_mode == "human":
            self.render()
        return frame, info

    @property
    def yaw(self) -> float:
        return 2 * np.pi * self.yaw_index / self.turn_steps

    def _free(self, x: float, y: float) -> bool:
        r = self.radius
        for cx in (int(np.floor(x - r)), int(np.floor(x + r))):
            for cy in (int(np.floor(y - r)), int(np.floor(y + r))):
                if not (0 <= cy < self.walls.shape[0] and 0 <= cx < self.walls.shape[1]) or self.walls[cy, cx]:
                    return False
        return True

    def step(self, action):
        if self._steps is None:
            raise RuntimeError("RoomsEnv.step() called before reset(); call env.reset() first")
        if self._ended:
            raise RuntimeError(f"RoomsEnv.step() called after the episode ended ({self._ended}); call env.reset() first")
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an int in [0, {self.action_space.n}) ({', '.join(ACTIONS)}), got {action!r}")
        name = ACTIONS[int(action)]
        if name == "TURN_LEFT":
            self.yaw_index = (self.yaw_index + 1) % self.turn_steps
        elif name == "TURN_RIGHT":
            self.yaw_index = (self.yaw_index - 1) % self.turn_steps
        elif name != "NOOP":
            forward = np.array([np.cos(self.yaw), np.sin(self.yaw)])
            left = np.array([-forward[1], forward[0]])
            move = {"FORWARD": forward, "BACK": -forward, "STRAFE_LEFT": left, "STRAFE_RIGHT": -left}[name]
            target = self.pos + self.move_step * move
            # Slide along walls: try each axis on its own.
            if self._free(target[0], self.pos[1]):
                self.pos[0] = target[0]
            if self._free(self.pos[0], target[1]):
                self.pos[1] = target[1]

        reward = 0.0
        if self.collectible:
            reached = self.alive & (np.linalg.norm(self.objects - self.pos, axis=1) < 0.5)
            reward = float(reached.sum())
            self.alive &= ~reached
        self._steps += 1
        terminated = bool(self.collectible and not self.alive.any())
        truncated = self._steps >= self.max_steps
        # why it ended, for the error a further step raises
        self._ended = ("terminated: every object collected" if terminated else
                       f"truncated at max_steps={self.max_steps}" if truncated else False)
        frame, info = self._observe()
        if self.render_mode == "human":
            self.render()
        return frame, reward, terminated, truncated, info

    def pose_model(self) -> dict:
        """What each action does to the camera pose when nothing blocks it, (forward,
        left, turn radians) per action, and the camera's view: keys for latent memory."""
        turn = 2 * np.pi / self.turn_steps
        moves = {"NOOP": (0, 0, 0), "FORWARD": (self.move_step, 0, 0), "BACK": (-self.move_step, 0, 0),
                 "TURN_LEFT": (0, 0, turn), "TURN_RIGHT": (0, 0, -turn), "STRAFE_LEFT": (0, self.move_step, 0),
                 "STRAFE_RIGHT": (0, -self.move_step, 0)}
        return {"motion": [list(map(float, moves[name])) for name in ACTIONS],
                "fov_deg": float(np.degrees(2 * np.arctan(self.half_fov))), "reach": float(self.room_size)}

    # ------------------------------------------------------------- rendering
    def _observe(self):
        frame, depth, in_view, column, ids = self._render()
        self._frame = frame
        info = {"gt": {
            "pose": np.array([self.pos[0], self.pos[1], self.yaw], dtype=np.float32),
            "objects_xy": self.objects.astype(np.float32),
            "objects_alive": self.alive.copy(),
            "objects_in_view": in_view,
            "objects_column": column,
            "depth": depth.astype(np.float32),
            "object_ids": ids,
            "room": np.int64(self.room_id[int(self.pos[1]), int(self.pos[0])]),  # ROOM_COLOURS index
        }}
        return frame, info

    def render(self):
        if self._steps is None:
            return None
        if self.render_mode == "human":
            from envs.window import show

            show("worldsim Rooms", self._frame, scale=max(1, 256 // self.width))
            return None
        return self._frame.copy()

    def _cast(self, dir_x, dir_y):
        """Vectorised DDA over all columns: perpendicular depth, hit side, wall u, room id."""
        plane_x, plane_y = dir_y * self.half_fov, -dir_x * self.half_fov  # camera plane points right
        ray_x = dir_x + plane_x * self.cam_x
        ray_y = dir_y + plane_y * self.cam_x
        with np.errstate(divide="ignore"):
            delta_x = np.abs(1 / ray_x)
            delta_y = np.abs(1 / ray_y)
        px, py = self.pos
        map_x = np.full(self.width, int(px))
        map_y = np.full(self.width, int(py))
        step_x = np.where(ray_x < 0, -1, 1)
        step_y = np.where(ray_y < 0, -1, 1)
        side_x = np.where(ray_x < 0, (px - map_x) * delta_x, (map_x + 1 - px) * delta_x)
        side_y = np.where(ray_y < 0, (py - map_y) * delta_y, (map_y + 1 - py) * delta_y)
        side = np.zeros(self.width, dtype=bool)  # False: crossed an x boundary
        hit = np.zeros(self.width, dtype=bool)
        for _ in range(self.walls.shape[0] + self.walls.shape[1]):
            go_x = ~hit & (side_x < side_y)
            go_y = ~hit & ~go_x
            side_x = np.where(go_x, side_x + delta_x, side_x)
            map_x = np.where(go_x, map_x + step_x, map_x)
            side_y = np.where(go_y, side_y + delta_y, side_y)
            map_y = np.where(go_y, map_y + step_y, map_y)
            side = np.where(go_x, False, np.where(go_y, True, side))
            hit |= self.walls[map_y, map_x]
            if hit.all():
                break
        depth = np.where(side, side_y - delta_y, side_x - delta_x)
        wall_u = np.where(side, px + depth * ray_x, py + depth * ray_y) % 1.0
        # The wall takes the colour of the room the ray came from.
        prev_x = np.where(side, map_x, map_x - step_x)
        prev_y = np.where(side, map_y - step_y, map_y)
        return depth, side, wall_u, self.room_id[prev_y, prev_x], ray_x, ray_y

    def _render(self):
        H, W = self.height, self.width
        dir_x, dir_y = np.cos(self.yaw), np.sin(self.yaw)
        depth, side, wall_u, room, ray_x, ray_y = self._cast(dir_x, dir_y)
        img = self.ceiling.copy()

        # Floor: checkerboard by cell, so forward motion shows.
        wx = self.pos[0] + self.floor_dist * ray_x
        wy = self.pos[1] + self.floor_dist * ray_y
        checker = (np.floor(wx) + np.floor(wy)).astype(np.int64) & 1
        fog = np.clip(1.2 - self.floor_dist / 8, 0.35, 1.0)[..., None]
        img[self.floor_rows] = FLOOR_TONES[checker] * fog

        # Walls: room tint, darker y-facing sides, panel seams, a baseboard, fog.
        half = 0.5 * self.focal / np.maximum(depth, 1e-6)
        in_wall = np.abs(self.row_y) < half
        colour = ROOM_COLOURS[np.maximum(room, 0)] * np.where(side, 0.75, 1.0)[:, None]
        colour *= np.where((wall_u * 2) % 1.0 < 0.06, 0.6, 1.0)[:, None]
        colour *= np.clip(1.1 - depth / 12, 0.3, 1.0)[:, None]
        base = self.row_y > 0.8 * half
        wall = np.where(base[..., None], colour * 0.55, colour)
        img = np.where(in_wall[..., None], wall, img)
        frame = img.astype(np.uint8)

        # Billboards, far to near, depth-tested against the walls per column; the id
        # buffer records which object owns each pixel (the ground-truth object mask).
        ids = np.full((H, W), -1, dtype=np.int8)
        rel = self.objects - self.pos
        fwd = rel @ np.array([dir_x, dir_y])
        right = rel @ np.array([dir_y, -dir_x])
        for i in np.argsort(-fwd):
            if not self.alive[i] or fwd[i] < 0.1:
                continue
            centre = (right[i] / (fwd[i] * self.half_fov) + 1) * W / 2
            half_w = 0.2 * self.focal / fwd[i]
            top = H / 2 - 0.1 * self.focal / fwd[i]
            bottom = H / 2 + 0.5 * self.focal / fwd[i]
            cols = np.arange(max(int(np.ceil(centre - half_w - 0.5)), 0), min(int(centre + half_w - 0.5), W - 1) + 1)
            cols = cols[depth[cols] > fwd[i]]
            rows = np.arange(max(int(np.ceil(top - 0.5)), 0), min(int(bottom - 0.5), H - 1) + 1)
            if len(cols) == 0 or len(rows) == 0:
                continue
            mask = SHAPE_MASKS[self.object_shapes[i]]
            n = mask.shape[0]
            mu = np.clip(((cols + 0.5 - (centre - half_w)) / (2 * half_w) * n).astype(int), 0, n - 1)
            mv = np.clip(((rows + 0.5 - top) / (bottom - top) * n).astype(int), 0, n - 1)
            block = ids[rows[0]:rows[-1] + 1][:, cols]
            block[mask[mv[:, None], mu[None, :]]] = i
            ids[rows[0]:rows[-1] + 1, cols] = block
        drawn = ids >= 0
        frame[drawn] = self.object_colours[ids[drawn]]

        # Visibility and screen column from the final mask, so occlusion counts.
        in_view = np.zeros(self.n_objects, dtype=bool)
        column = np.full(self.n_objects, -1, dtype=np.int64)
        ys, xs = np.nonzero(drawn)
        owner = ids[ys, xs]
        for i in np.unique(owner):
            in_view[i] = True
            column[i] = int(round(xs[owner == i].mean()))
        return frame, depth, in_view, column, ids
