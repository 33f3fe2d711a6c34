"""Shared test fixtures: a generated corpus, a private shard cache, one CPU thread. Opt-in:
tests/train, tests/reliability and tests/tasks switch them on for every test, other modules with
`pytestmark = pytest.mark.usefixtures("one_thread_private_cache")`.

One thread per process: the test machines have two cores, several threads per run oversubscribe
them (ten times slower), and runs compared bitwise must use the same thread count.
"""

import random

import pytest
import torch

WORDS = "the cat sat on a mat and dog ran to big red house with small blue car".split()


def write_corpus(path, lines: int = 300, seed: int = 0):
    rng = random.Random(seed)
    text = "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) + "\n"
                   for _ in range(lines))
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def one_thread_private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("OMP_NUM_THREADS", "1")  # inherited by subprocesses
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("data") / "corpus.txt")


@pytest.fixture(scope="module")
def tiny_args(corpus):
    """`lmlab pretrain` arguments for a tiny CPU run into `out`; keyword flags override."""

    def make(out, **flags) -> list[str]:
        values = {"model": "gpt2", "preset": "tiny", "data": str(corpus), "tokenizer": "chars",
                  "out": str(out), "steps": 12, "batch_size": 4, "seq_len": 32, "lr": 3e-3,
                  "warmup": 2, "log_every": 1, "eval_every": 0, "eval_batches": 2, "save_every": 0,
                  "device": "cpu", **flags}
        args = ["pretrain", "--no-progress"]
        for name, value in values.items():
            if name == "set":
                for item in value:
                    args += ["--set", item]
            elif value is True:
                args.append("--" + name.replace("_", "-"))
            elif value is not None and value is not False:
                args += ["--" + name.replace("_", "-"), str(value)]
        return args

    return make


@pytest.fixture
def register_family(monkeypatch):
    """Declare a test model class as a family for one test: lmlab asks the registry what a model is
    (its kind and state), so a test model must be declared like any family. Returns a function
    register(name, model_class, kind=..., state=...) -> name; set `model.family = name`."""
    from lmlab.models import registry

    def register(name, model_cls, config=type(None), kind="causal_lm", state="none", **fields):
        fields.setdefault("paper", "test")
        family = registry.Family(config, model_cls, {"tiny": {}}, kind=kind, state=state, **fields)
        monkeypatch.setitem(registry.FAMILIES, name, family)
        return name

    return register


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """make(family, tokenizer=None, **fields) -> a dir holding a freshly built tiny model of `family`
    (seed 0; vocab_size from the tokenizer unless given), saved with `tokenizer`."""
    import lmlab

    def make(family: str, tokenizer=None, **fields):
        if tokenizer is not None:
            fields.setdefault("vocab_size", tokenizer.vocab_size)
        torch.manual_seed(0)
        out = tmp_path_factory.mktemp(family)
        lmlab.save(lmlab.build(family, "tiny", **fields), tokenizer, out)
        return out

    return make
