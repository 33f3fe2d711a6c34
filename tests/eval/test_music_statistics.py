"""note_statistics (lmlab.eval.music): pitch range, note density and voices of a hand-made piece."""

import pytest

from lmlab.eval.music import note_statistics
from lmlab.tokenizers.midi_notes import DRUMS, Note


def test_statistics_of_a_hand_made_piece():
    # 12 steps per quarter; two quarters of a C-major triad, then one quarter of a single G,
    # one drum hit (left out)
    notes = [Note(0, 24, 60, 64, 0), Note(0, 24, 64, 64, 0), Note(0, 24, 67, 64, 0), Note(24, 36, 79, 64, 40),
             Note(5, 6, 36, 64, DRUMS)]
    stats = note_statistics(notes, 12)
    assert stats["range"] == 79 - 60 and stats["notes"] == 4
    assert stats["density"] == pytest.approx(4 / 3)  # 4 notes over 3 quarters
    assert stats["voices"] == pytest.approx((24 * 3 + 12 * 1) / 36)  # 3 voices for 2/3, then 1
    silent_gap = [Note(0, 12, 60, 64, 0), Note(36, 48, 62, 64, 0)]  # time without sound is not averaged
    assert note_statistics(silent_gap, 12)["voices"] == 1.0
    assert note_statistics([Note(0, 1, 36, 64, DRUMS)], 12) is None
