"""Token shards: round trip, header checks at open, id range checks at write."""

import json
import struct

import numpy as np
import pytest

from lmlab.data.shards import MAGIC, open_shard, read_header, write_shard
from lmlab.errors import DataError


def test_round_trip_uint16(tmp_path):
    ids = np.random.default_rng(0).integers(0, 1000, size=5000)
    path = write_shard(tmp_path / "a.bin", ids, vocab_size=1000, meta={"split": "train"})
    shard = open_shard(path)
    assert shard.dtype == "uint16" and shard.vocab_size == 1000 and len(shard) == 5000
    assert shard.meta == {"split": "train"}
    np.testing.assert_array_equal(shard.tokens, ids)
    np.testing.assert_array_equal(shard[10:20], ids[10:20])
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # no temp file left behind


def test_round_trip_uint32_and_data_alignment(tmp_path):
    ids = [0, 65535, 65536, 69999]
    path = write_shard(tmp_path / "b.bin", ids, vocab_size=70000)
    shard = open_shard(path)
    assert shard.dtype == "uint32" and shard.tokens.tolist() == ids
    _, offset = read_header(path)
    assert offset % 64 == 0


def test_vocab_65536_still_fits_uint16(tmp_path):
    shard = open_shard(write_shard(tmp_path / "c.bin", [65535], vocab_size=65536))
    assert shard.dtype == "uint16" and shard.tokens.tolist() == [65535]


def test_empty_shard_round_trips(tmp_path):
    shard = open_shard(write_shard(tmp_path / "e.bin", [], vocab_size=10))
    assert len(shard) == 0


@pytest.mark.parametrize("bad", [10, -1])
def test_out_of_vocab_ids_refused_and_nothing_written(tmp_path, bad):
    path = tmp_path / "bad.bin"
    with pytest.raises(DataError, match=rf"bad\.bin.*token id {bad} at position 2.*\[0, 10\)"):
        write_shard(path, [1, 2, bad, 3], vocab_size=10)
    assert not path.exists()


def test_non_integer_ids_refused(tmp_path):
    with pytest.raises(DataError, match="integers"):
        write_shard(tmp_path / "f.bin", [0.5, 1.0], vocab_size=10)


def _write(tmp_path, n=1000, vocab=500):
    ids = np.arange(n) % vocab
    return write_shard(tmp_path / "s.bin", ids, vocab_size=vocab)


def test_truncated_shard_refused_naming_it(tmp_path):
    path = _write(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(DataError, match=r"s\.bin: shard truncated: header says 1000 uint16 tokens"):
        open_shard(path)
    path.write_bytes(data[:12])  # cut inside the length prefix
    with pytest.raises(DataError, match=r"s\.bin: not an lmlab token shard"):
        open_shard(path)
    path.write_bytes(data[:40])  # cut inside the JSON header
    with pytest.raises(DataError, match=r"s\.bin: shard header length .* truncated"):
        open_shard(path)


def test_trailing_bytes_refused(tmp_path):
    path = _write(tmp_path)
    path.write_bytes(path.read_bytes() + b"\0\0")
    with pytest.raises(DataError, match=r"s\.bin: shard has trailing bytes"):
        open_shard(path)


def test_tampered_token_refused_naming_shard(tmp_path):
    path = _write(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # flip one bit of the last token
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"s\.bin: shard token bytes do not match the header sha256"):
        open_shard(path)
    assert len(open_shard(path, verify=False)) == 1000  # structure is fine; only the hash catches it


def test_bad_magic_refused(tmp_path):
    path = _write(tmp_path)
    path.write_bytes(b"NOTASHRD" + path.read_bytes()[8:])
    with pytest.raises(DataError, match=r"s\.bin: not an lmlab token shard"):
        open_shard(path)


def _rewrite_header(path, edit):
    data = path.read_bytes()
    (hlen,) = struct.unpack("<Q", data[8:16])
    header = json.loads(data[16 : 16 + hlen])
    edit(header)
    blob = json.dumps(header).encode()
    assert len(blob) <= hlen
    path.write_bytes(MAGIC + struct.pack("<Q", hlen) + blob.ljust(hlen) + data[16 + hlen :])


def test_edited_header_refused(tmp_path):
    path = _write(tmp_path)
    _rewrite_header(path, lambda h: h.update(count=999))
    with pytest.raises(DataError, match=r"s\.bin: shard has trailing bytes"):
        open_shard(path)

    path = _write(tmp_path)
    _rewrite_header(path, lambda h: h.update(dtype="int8"))
    with pytest.raises(DataError, match=r"s\.bin: shard dtype 'int8'"):
        open_shard(path)

    path = _write(tmp_path)
    _rewrite_header(path, lambda h: h.update(vocab_size=100, sha256="0" * 64))
    with pytest.raises(DataError, match=r"s\.bin: shard token bytes do not match"):
        open_shard(path)


def test_ids_beyond_header_vocab_refused_on_verify(tmp_path):
    # A shard whose header vocab was lowered *and* re-hashed still fails: ids are range-checked.
    path = _write(tmp_path, n=100, vocab=500)
    _rewrite_header(path, lambda h: h.update(vocab_size=50))
    with pytest.raises(DataError, match=r"s\.bin"):
        open_shard(path)


def test_missing_shard_named(tmp_path):
    with pytest.raises(DataError, match=r"nope\.bin: token shard not found"):
        open_shard(tmp_path / "nope.bin")
