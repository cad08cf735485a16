"""minerl.herobraine.hero.spaces as minerl 0.4.4 has them (old gym semantics), reduced to
what an adapter reads: Discrete.n, Box.low/high/shape/dtype, Dict.spaces (keys sorted, as
gym sorts a plain dict), Enum.values (sorted strings) and Enum.default."""

from collections import OrderedDict

import numpy as np


class Discrete:
    def __init__(self, n):
        self.n = int(n)
        self.shape, self.dtype = (), np.int64

    def contains(self, x):
        return isinstance(x, (int, np.integer)) and 0 <= int(x) < self.n

    def no_op(self):
        return 0

    def sample(self, rng):
        return int(rng.integers(self.n))

    def __repr__(self):
        return f"Discrete({self.n})"


class Box:
    def __init__(self, low, high, shape, dtype=np.float32):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.low = np.full(self.shape, low, self.dtype)
        self.high = np.full(self.shape, high, self.dtype)

    def contains(self, x):
        x = np.asarray(x)
        return x.shape == self.shape and bool(np.all(x >= self.low)) and bool(np.all(x <= self.high))

    def no_op(self):
        return np.zeros(self.shape, self.dtype)

    def __repr__(self):
        return f"Box(low={self.low.min()}, high={self.high.max()}, shape={self.shape})"


class Enum(Discrete):
    """Values are strings; minerl sorts them and takes (and gives) the strings themselves."""

    def __init__(self, *values, default=None):
        self.default = default if default is not None else values[0]
        super().__init__(len(values))
        self.values = np.array(sorted(values))

    def contains(self, x):
        return isinstance(x, str) and x in self.values

    def no_op(self):
        return self.default

    def __repr__(self):
        return "Enum(" + ",".join(self.values) + ")"


class Dict:
    def __init__(self, spaces):
        items = spaces.items() if isinstance(spaces, dict) else spaces
        self.spaces = OrderedDict(sorted(items))

    def contains(self, x):
        return isinstance(x, dict) and set(x) <= set(self.spaces) and all(
            self.spaces[k].contains(v) for k, v in x.items())

    def no_op(self):
        return OrderedDict((k, s.no_op()) for k, s in self.spaces.items())

    def __getitem__(self, key):
        return self.spaces[key]

    def __repr__(self):
        return "Dict(" + ", ".join(f"{k}:{v}" for k, v in self.spaces.items()) + ")"
