"""experiments/ulmfit.py's `ptb_style`: task text written as Mikolov's PTB is, so that the general LM
(pretrained on builtin:ptb) reads the task's words, not <unk>: PTB has no punctuation at all, keeps
hyphenated words whole, splits clitics off, writes numbers as N and one sentence per line."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "ulmfit.py"


@pytest.fixture(scope="module")
def ptb_style():
    spec = importlib.util.spec_from_file_location("ulmfit_experiment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ptb_style


def test_punctuation_is_dropped_and_sentences_become_lines(ptb_style):
    text = "It's not a pretty death, and it isn't (really) a self-indulgent film! He paid $3.5 million."
    assert ptb_style(text) == ("it 's not a pretty death and it is n't really a self-indulgent film\n"
                               "he paid $ N million")


def test_already_tokenized_text_keeps_its_words(ptb_style):
    # the built-in corpora come tokenized and lower case (polarity) or as raw snippets (rotten-tomatoes)
    got = ptb_style("the film ca n't act , but it 's fun . 10 / 10")
    assert got == "the film ca n't act but it 's fun\nN N"


def test_every_token_is_of_a_kind_ptb_has(ptb_style):
    text = "A \"mind-blowing\" ride; 2 hours: worth it?? Yes -- (mostly) ... *sigh* it's O.K. & fun / 'ok'"
    for line in ptb_style(text).split("\n"):
        assert line and all(re.fullmatch(r"[a-z]+(?:[-&][a-z]+)*|'[a-z]+|n't|\$|N", w) for w in line.split())
