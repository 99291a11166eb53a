"""Bad values and operating-system errors reach the user as one line naming the key or file, never a traceback."""
import argparse
import errno

import cv2
import pytest

from detkit.cli import add_common_args, one_line, run
from detkit.config import load_config
from detkit.errors import DetkitError


@pytest.mark.parametrize("override, message", [
    ("threads=-1", "config key 'threads' must be at least 1 or null, got -1"),
    ("model.roi_heads.batch_size_per_image=0", "'model.roi_heads.batch_size_per_image' must be at least 1, got 0"),
    ("data.num_workers=-2", "'data.num_workers' must be 0 or more"),
    ("model.rpn.positive_fraction=1.5", "'model.rpn.positive_fraction' must lie in (0, 1]"),
    ("data.max_image_pixels=0", "'data.max_image_pixels' must be at least 1 or null"),
])
def test_out_of_range_values_fail_at_load_naming_the_key(override, message):
    with pytest.raises(DetkitError) as info:
        load_config("configs/demo.yaml", [override])
    assert message in str(info.value)
    assert load_config("configs/demo.yaml", ["threads=null", "data.max_image_pixels=null"]).threads is None


@pytest.mark.parametrize("base", ["5", "[a.yaml, 3]", "{a: 1}"])
def test_a_base_that_is_not_a_path_names_the_key_and_file(tmp_path, base):
    (tmp_path / "bad.yaml").write_text(f"_base_: {base}\n")
    with pytest.raises(DetkitError, match=r"config key '_base_' in .*bad.yaml must be a file path or a list"):
        load_config(tmp_path / "bad.yaml")


def run_main(raise_error, capsys, *argv):
    parser = argparse.ArgumentParser(prog="tool.py")
    add_common_args(parser)

    def main(args):
        raise raise_error

    import sys

    old_argv, sys.argv = sys.argv, ["tool.py", *argv]
    try:
        with pytest.raises(SystemExit) as info:
            run(main, parser)
    finally:
        sys.argv = old_argv
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("error, expected", [
    (FileExistsError(errno.EEXIST, "File exists", "outputs/run"), "File exists: 'outputs/run'"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "f/run"), "Not a directory: 'f/run'"),
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (cv2.error("OpenCV(4.10.0) loadsave.cpp:77: error: (-215:Assertion failed) pixels <= CV_IO_MAX_IMAGE_PIXELS"),
     "pixels <= CV_IO_MAX_IMAGE_PIXELS"),
])
def test_os_and_cv2_errors_print_one_line_and_exit_2(capsys, error, expected):
    code, err = run_main(error, capsys)
    assert code == 2 and expected in err and "Traceback" not in err and err.count("\n") == 1
    with pytest.raises(type(error)):
        run_main(error, capsys, "--debug")


def test_a_loader_workers_reraised_error_keeps_only_its_message():
    reraised = DetkitError("Caught DetkitError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           "call last):\n  File \"x.py\", line 3, in f\n    read_image(p)\n"
                           "detkit.errors.DetkitError: Image file a/b.jpg is corrupt or not an image cv2 can decode.")
    assert one_line(reraised) == "Image file a/b.jpg is corrupt or not an image cv2 can decode."
    assert one_line(ValueError("")) == "ValueError"
