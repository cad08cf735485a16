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


@pytest.fixture(scope="session")
def pipeline(rooms_dataset, tmp_path_factory):
    """collect -> tiny tokenizer -> encode -> tiny dynamics -> export: the real pipeline, small."""
    from training.train_dynamics import TrainConfig as DynamicsTrainConfig, train as train_dyn
    from training.train_tokenizer import TrainConfig as TokenizerTrainConfig, encode_dataset, train as train_tok
    from worldsim.export import export_world_model

    root = tmp_path_factory.mktemp("pipeline")
    train_tok(TokenizerTrainConfig(data=str(rooms_dataset), out=str(root / "tok"), config="tiny", steps=40, batch_size=8, warmup=5,
                     ckpt_every=40), progress=False)
    encode_dataset(str(root / "tok" / "latest.safetensors"), str(rooms_dataset), str(root / "latents"), progress=False)
    dyn = DynamicsTrainConfig(data=str(root / "latents"), out=str(root / "dyn"), config="tiny", steps=40, batch_size=4, warmup=5,
                 ckpt_every=20, log_every=5)
    summary = train_dyn(dyn, progress=False)
    export_world_model(str(root / "dyn" / "latest.safetensors"), str(root / "world.safetensors"))
    return root, dyn, summary


@pytest.fixture(scope="session")
def memory_world(pipeline, tmp_path_factory):
    """The pipeline's tiny dynamics fine-tuned with 2 memory frames, exported."""
    from training.train_dynamics import TrainConfig, train
    from worldsim.export import export_world_model

    root, _, _ = pipeline
    out = tmp_path_factory.mktemp("memory")
    cfg = TrainConfig(data=str(root / "latents"), out=str(out / "dyn"), config="tiny", memory=2, steps=30, batch_size=4,
                      warmup=5, ckpt_every=30, log_every=5, init=str(root / "dyn" / "latest.safetensors"))
    summary = train(cfg, progress=False)
    export_world_model(str(out / "dyn" / "latest.safetensors"), str(out / "world.safetensors"))
    return out / "world.safetensors", summary
