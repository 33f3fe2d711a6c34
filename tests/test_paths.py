"""lmlab.paths.output_file: a file path to write, checked before the work."""

import pytest

from lmlab.errors import ConfigError
from lmlab.paths import output_file


def test_output_file_makes_its_folder_and_refuses_folders_and_files_as_folders(tmp_path):
    assert output_file(tmp_path / "a" / "b" / "x.png", "--out") == tmp_path / "a" / "b" / "x.png"
    assert (tmp_path / "a" / "b").is_dir()
    with pytest.raises(ConfigError, match=r"^--out .* is a folder; expected the path of a file"):
        output_file(tmp_path / "a", "--out")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"f\.txt is a file, not a folder$"):
        output_file(tmp_path / "f.txt" / "sub" / "x.json", "--json")
