"""The README documents every setting and its quick start is what CI runs."""

from pathlib import Path

from escrow.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [name for name in Settings.model_fields if f"`ESCROW_{name.upper()}`" not in README]
    assert missing == []


def test_ci_runs_the_readme_test_command() -> None:
    command = 'pip install -e ".[test]" && pytest'
    assert command in README
    assert command in (ROOT / ".ci" / "run").read_text()
