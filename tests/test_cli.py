from typer.testing import CliRunner

from cxrpipe.cli import STAGES, app

runner = CliRunner()


def test_every_stage_is_a_subcommand():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for name, _ in STAGES:
        assert name in result.output


def test_prepare_help_documents_its_options():
    result = runner.invoke(app, ["prepare", "--help"])
    assert result.exit_code == 0, result.output
    assert "--params" in result.output and "--out" in result.output
    assert "data/prepared" in result.output


def test_unknown_params_key_is_a_clear_error(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("demo:\n  n_studys: 3\n")
    result = runner.invoke(app, ["demo-data", "--params", str(bad), "--out", str(tmp_path / "demo")])
    assert result.exit_code != 0
    assert "n_studys" in str(result.exception) + result.output


def test_a_misspelt_protocol_lists_the_choices(tmp_path):
    result = runner.invoke(app, ["finetune", "--protocol", "lineer", "--params", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert "'lineer' is not one of fc, linear, finetune" in out and "--protocol" in out


def test_a_misspelt_variant_lists_the_choices(tmp_path):
    result = runner.invoke(app, ["pretrain", "--variant", "multimodel", "--params", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert "'multimodel' is not one of mae, multimodal" in out and "--variant" in out


def test_no_stage_script_shadows_a_standard_module():
    """`python stages/X.py` puts stages/ first on sys.path: a script named like a standard module (it was
    profile.py) hides that module from everything the stage imports (transformers' cProfile import then
    failed, and `python stages/embed.py` could not load the text model), so no script there, or in benchmarks/, may take such a name."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    stages = {p.stem for p in (root / "stages").glob("*.py")}
    assert {m for _, m in STAGES} <= stages
    for folder in ("stages", "benchmarks"):  # both are run as `python <folder>/<script>.py`
        assert not {p.stem for p in (root / folder).glob("*.py")} & set(sys.stdlib_module_names), folder
