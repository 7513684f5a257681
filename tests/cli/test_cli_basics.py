"""CLI conventions: --version, --help with an example, config errors as one line with exit code 2."""

from __future__ import annotations

import pytest

from medgen import __version__
from medgen.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"medgen {__version__}"


@pytest.mark.parametrize("command", ["preprocess", "phantoms"])
def test_help_shows_an_example(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "Example:" in out and f"medgen {command}" in out
    for flag in ("-o OUT_DIR", "-q, --quiet", "-v, --verbose"):
        assert flag in out


def test_preprocess_help_lists_config_flags(capsys):
    with pytest.raises(SystemExit):
        main(["preprocess", "--help"])
    out = capsys.readouterr().out
    for flag in ("-c CONFIG, --config CONFIG", "--set KEY=VALUE", "--workers", "--overwrite", "--modality"):
        assert flag in out


def _one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    return err[0]


def test_unknown_config_key_is_one_line_listing_valid_keys(tmp_path, capsys):
    line = _one_line_error(capsys, ["preprocess", str(tmp_path), "-o", str(tmp_path / "o"), "--modality", "ct",
                                    "--set", "unknown.key=1"])
    assert "unknown config key 'unknown.key'" in line and "valid keys:" in line
    assert "ct.window" in line and "crop.margin_mm" in line and "spacing" in line


def test_wrong_config_type_is_one_line(tmp_path, capsys):
    line = _one_line_error(capsys, ["preprocess", str(tmp_path), "-o", str(tmp_path / "o"), "--modality", "ct",
                                    "--set", "crop.margin_mm=wide"])
    assert "'crop.margin_mm'" in line and "wide" in line and "valid keys:" in line


def test_config_name_and_modality_must_agree(tmp_path, capsys):
    line = _one_line_error(capsys, ["preprocess", str(tmp_path), "-o", str(tmp_path / "o"), "--modality", "ct",
                                    "-c", "preprocess/mr"])
    assert "preprocess/mr" in line and "modality 'mr'" in line
    line = _one_line_error(capsys, ["preprocess", str(tmp_path), "-o", str(tmp_path / "o"), "-c", "no/such"])
    assert "no/such" in line and "preprocess/ct" in line  # lists shipped configs


def test_shipped_mr_config_resolves():
    from medgen.transforms.recipes import load_preprocess_config
    config = load_preprocess_config("preprocess/mr")
    assert config.modality == "mr" and config.mr.n4 is False and config.spacing == (2.0, 2.0, 3.0)
