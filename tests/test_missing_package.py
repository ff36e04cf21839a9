"""An option whose module imports a package that is not installed fails with one line that names the package and
how to install it (not Hydra's wrapper, whose first line ends at a colon)."""

import sys

import pytest
from omegaconf import OmegaConf

from lipsync_lab.build import make
from lipsync_lab.errors import LipsyncInputError


def option(tmp_path, monkeypatch, name: str, body: str):
    """A target `<name>.Thing` in a module of its own, importable from tmp_path."""
    (tmp_path / f"{name}.py").write_text(f"{body}\n\nclass Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return OmegaConf.create({"_target_": f"{name}.Thing"})


def test_a_missing_package_is_named_with_its_install_command(tmp_path, monkeypatch):
    node = option(tmp_path, monkeypatch, "lipsync_option_xyz", "import no_such_package_xyz")
    with pytest.raises(LipsyncInputError) as e:
        make(node)
    assert str(e.value) == ("lipsync_option_xyz.Thing: needs the Python package 'no_such_package_xyz', which is not "
                            "installed here (pip install no_such_package_xyz)")


def test_the_pip_name_where_it_differs_from_the_import_name(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` fails as if opencv were not installed
    node = option(tmp_path, monkeypatch, "lipsync_option_cv", "import cv2")
    with pytest.raises(LipsyncInputError, match=r"needs the Python package 'opencv-python-headless' \(module cv2\), "
                                                r"which is not installed here \(pip install opencv-python-headless\)$"):
        make(node)


def test_an_import_error_that_says_what_to_install_is_kept(tmp_path, monkeypatch):
    body = ("try:\n    import no_such_package_xyz\nexcept ImportError as e:\n"
            "    raise ImportError('this option needs xyz: pip install xyz-extra') from e")
    node = option(tmp_path, monkeypatch, "lipsync_option_own", body)
    with pytest.raises(LipsyncInputError) as e:
        make(node)
    assert str(e.value) == "lipsync_option_own.Thing: this option needs xyz: pip install xyz-extra"
