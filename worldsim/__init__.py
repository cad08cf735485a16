"""worldsim: a generative world model behind the Gymnasium API."""

__version__ = "0.1.0"


def _register():
    import gymnasium as gym

    if "worldsim/Dream-v0" not in gym.registry:
        gym.register("worldsim/Dream-v0", entry_point="worldsim.dream_env:DreamEnv",
                     vector_entry_point="worldsim.dream_env:DreamVectorEnv", disable_env_checker=True)


_register()
