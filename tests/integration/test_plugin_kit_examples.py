"""
The contract examples of docs/plugins.md "Testing a plugin", run as written: the trial one with
``python -m twisted.trial`` and the pytest one with pytest and pytest-twisted, each in a process
of its own on the real reactor (the unit tests run the same contracts on a ``Clock``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from yatagarasu.testing import AuthSchemeContract, CacheLayerContract

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def contract_examples() -> list[str]:
    """:returns: the python blocks of the section that subclass a contract."""
    text = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = text.split("## Testing a plugin", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    return [block for block in blocks if re.search(r"^class \w+\(\w+Contract\b", block, re.M)]


def contract_tests(contract: type) -> int:
    return len([name for name in dir(contract) if name.startswith("test_")])


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_section_has_a_trial_and_a_pytest_example() -> None:
    examples = contract_examples()
    assert len(examples) == 2
    assert "from twisted.trial.unittest import TestCase" in examples[0]
    assert "@pytest.fixture(autouse=True)" in examples[1]


def test_the_trial_example_passes_under_trial(tmp_path: Path) -> None:
    (tmp_path / "test_apikey_contract.py").write_text(contract_examples()[0])
    done = run([sys.executable, "-m", "twisted.trial", "test_apikey_contract"], tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f"PASSED (successes={contract_tests(AuthSchemeContract)})" in output


def test_the_pytest_example_passes_under_pytest_twisted(tmp_path: Path) -> None:
    (tmp_path / "test_dict_layer.py").write_text(contract_examples()[1])
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not this repository's configuration
    done = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f"{contract_tests(CacheLayerContract)} passed" in output
