"""Output folders: a file in the way is one line naming it; otherwise folders are created."""

import pytest

from megatron_bliss.utils.dirs import check_dir_creatable, ensure_dir


def test_file_in_the_way_is_named(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"f: --run-dir is a file"):
        check_dir_creatable(tmp_path / "f", "--run-dir")
    with pytest.raises(ValueError, match=r"f/a/b: --output folder is under the file .*f$"):
        ensure_dir(tmp_path / "f" / "a" / "b", "--output folder")


def test_new_and_existing_folders_are_fine(tmp_path):
    assert ensure_dir(tmp_path / "a" / "b").is_dir()
    assert ensure_dir(tmp_path / "a" / "b").is_dir()
    assert check_dir_creatable(tmp_path / "c" / "d") == tmp_path / "c" / "d"
    assert not (tmp_path / "c").exists()
