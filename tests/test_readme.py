"""The README's set-up commands are what CI runs."""

from __future__ import annotations

import re

from conftest import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text)[:2]


def test_ci_runs_the_readme_commands_verbatim():
    install, test = readme_commands()
    assert "pip install" in install and install.endswith("flux-batch")
    assert "pytest" in test
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert install in ci and test in ci
