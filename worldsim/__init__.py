"""worldsim: a generative world model behind the Gymnasium API."""

__version__ = "0.1.0"
