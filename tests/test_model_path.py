from pathlib import Path

import pytest

from sglang_rksc.runtime.model_path import ModelPathError, check_model_path


def test_a_converted_model_folder_passes(default_model_dir: Path):
    assert check_model_path(str(default_model_dir)) == default_model_dir


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing", "neither a local folder nor in the Hugging Face cache"),
        (lambda d: (d / "f.txt").write_text("x") and d / "f.txt", "is a file"),
        (lambda d: d, "has no config.json"),
        (lambda d: (d / "config.json").write_text("{}") and d, "no weight files"),
    ],
)
def test_unusable_paths_say_why(tmp_path: Path, make, message):
    with pytest.raises(ModelPathError, match=message):
        check_model_path(str(make(tmp_path)))


def test_unknown_hub_id_is_not_downloaded():
    with pytest.raises(ModelPathError, match="does not download"):
        check_model_path("no-such-org/no-such-model-xyz")
