"""The old `pynvml` distribution, which installs its own `pynvml` module over nvidia-ml-py's, is
found by its installed metadata and said in one note; pynvml 12+ (a shim on nvidia-ml-py) is not."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest

from leakcheck.probes.nvml import NvmlProbe, old_pynvml_note


def install_metadata(site: Path, name: str, version: str, files: list[str]) -> None:
    """A distribution's metadata as pip leaves it in site-packages (METADATA and RECORD)."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    record = [*files, f"{info.name}/METADATA", f"{info.name}/RECORD"]
    (info / "RECORD").write_text("".join(f"{path},,\n" for path in record))


def test_old_pynvml_is_named_with_its_version_and_the_fix(tmp_path):
    install_metadata(tmp_path, "pynvml", "11.5.0", ["pynvml.py", "pynvml_utils.py"])
    note = old_pynvml_note([str(tmp_path)])
    assert note is not None
    assert "(11.5.0)" in note and "nvidia-ml-py" in note
    assert "pip uninstall -y pynvml && pip install --force-reinstall nvidia-ml-py" in note


def test_pynvml_12_shim_is_not_a_shadow(tmp_path):
    install_metadata(tmp_path, "pynvml", "12.0.0", ["pynvml_utils/__init__.py", "pynvml_utils/smi.py"])
    assert old_pynvml_note([str(tmp_path)]) is None


def test_nothing_installed_there_says_nothing(tmp_path):
    install_metadata(tmp_path, "nvidia_ml_py", "12.560.30", ["pynvml.py"])
    assert old_pynvml_note([str(tmp_path)]) is None


def test_this_environment_has_nvidia_ml_py_alone():
    assert importlib.metadata.version("nvidia-ml-py")
    assert old_pynvml_note() is None


def test_the_probe_carries_the_note_into_the_report(tmp_path, monkeypatch):
    """Installed first on sys.path, as a user's environment would have it; the metadata alone
    (no module file) is enough to be found, and `import pynvml` still gets nvidia-ml-py's."""
    install_metadata(tmp_path, "pynvml", "8.0.4", ["pynvml.py", "pynvml-8.0.4.dist-info/top_level.txt"])
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    probe = NvmlProbe.open(0)
    assert any("old `pynvml` package (8.0.4)" in note for note in probe.notes), probe.notes
    monkeypatch.undo()
    assert not any("old `pynvml`" in note for note in NvmlProbe.open(0).notes)


@pytest.mark.parametrize("files", [["pynvml/__init__.py"], []])
def test_a_package_form_or_top_level_file_counts(tmp_path, files):
    install_metadata(tmp_path, "pynvml", "7.352.0", files)
    if not files:
        (tmp_path / "pynvml-7.352.0.dist-info" / "top_level.txt").write_text("pynvml\n")
    assert old_pynvml_note([str(tmp_path)]) is not None
