"""Same data, same tokenizer files, byte for byte, for every tokenizer kind: trained in two separate
Python processes with different PYTHONHASHSEED (set and dict order, and the Rust trainers' own
hash maps, differ between processes), so the same seed gives the same ids and shard cache keys."""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

KINDS = ("words", "chars", "byte_bpe", "wordpiece")
SCRIPT = """
import sys
from lmlab.data.prepare import build_tokenizer_for, tokenizer_digest
corpus, out = sys.argv[1], sys.argv[2]
for kind in {kinds!r}:
    tok = build_tokenizer_for(corpus, kind, None if kind == "chars" else 700)
    tok.save(f"{{out}}/{{kind}}")
    print(kind, tokenizer_digest(tok))
"""


def corpus_text() -> str:
    """Many words of equal counts (ties for every trainer to break), accents, case and punctuation."""
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyzéüñ"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 9))) for _ in range(400)]
    words += [w.capitalize() for w in words[:50]] + ["naïve", "Straße", "東京", "x1", "3.14"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) + rng.choice(".,!?;")
             for _ in range(600)]
    return "\n".join(lines) + "\n"


def train_in_subprocess(corpus: Path, out: Path, hash_seed: str) -> dict[str, str]:
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONHASHSEED": hash_seed,
           "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(kinds=KINDS), str(corpus), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return dict(line.split() for line in done.stdout.splitlines())


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism")
    corpus = root / "corpus.txt"
    corpus.write_text(corpus_text(), encoding="utf-8")
    return [(root / seed, train_in_subprocess(corpus, root / seed, seed)) for seed in ("1", "2")]


@pytest.mark.parametrize("kind", KINDS)
def test_same_data_gives_the_same_tokenizer_files_in_another_process(two_runs, kind):
    (a, digests_a), (b, digests_b) = two_runs
    files_a, files_b = files(a / kind), files(b / kind)
    assert files_a and files_a.keys() == files_b.keys()
    for name in files_a:
        assert files_a[name] == files_b[name], f"{kind}/{name} differs between two processes"
    assert digests_a[kind] == digests_b[kind]  # hence the same shard cache key
