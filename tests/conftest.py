import numpy as np
import pytest

import envs  # noqa: F401  (registers the worldsim gymnasium ids)
from training.collect import collect


@pytest.fixture(scope="session")
def rooms_dataset(tmp_path_factory):
    """A small Rooms dataset collected by the explore policy (short episodes, all splits)."""
    out = tmp_path_factory.mktemp("rooms") / "data"
    collect("worldsim/Rooms-v0", "explore", steps=1200, out=str(out), num_envs=2, seed=0,
            env_kwargs={"max_steps": 100}, progress=False)
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(0)
