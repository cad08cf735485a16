"""A stand-in for the minerl 0.4.4 package, for worldsim's tests only (tests/test_minecraft.py
puts tests/minerl_standin on sys.path). minerl itself cannot be installed without Java 8.

It reproduces what worldsim's adapter touches, exactly as minerl 0.4.4 has it
(github.com/minerllabs/minerl, tag v0.4.4):

- ``minerl.herobraine.envs``: ``ENV_SPECS``, ``ENV_SPEC_MAPPINGS`` (name -> env spec) and
  ``BASIC_ENV_SPECS``, the nine MineRL v0.4 tasks (envs.py);
- an env spec's ``name``, ``max_episode_steps``, ``action_space``, ``observation_space`` and
  ``make()`` (env_spec.py);
- the spaces (hero/spaces.py): ``Dict`` with sorted keys, ``Discrete``, ``Box``, and
  ``Enum``, a Discrete whose values are strings (sorted) with a default;
- the old gym API of the env (env/_singleagent.py): ``seed(s)``, ``reset() -> obs``,
  ``step(action) -> (obs, reward, done, info)``, actions as a dict of ints, a float
  camera array and Enum strings, observations as a dict with ``pov`` (64, 64, 3) uint8.

The world behind it is a toy, deterministic given the seed: the camera turns the view
(hue from yaw, horizon from pitch), pixel (0, 0) encodes the tick (red = tick % 256,
green = tick // 256) so tests can check frame order, attack gathers a log, craft:planks
turns a log into 4 planks, place:dirt uses a dirt. Every action received is kept in
``env.received`` so tests can check what an adapter sent.
"""

STANDIN = True
__version__ = "0.4.4-standin"

import minerl.herobraine.envs  # noqa: E402,F401  (as minerl/__init__.py imports it)
