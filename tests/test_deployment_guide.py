"""docs/deployment.md names only settings that exist, and the README links to it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "deployment.md").read_text()
# Every variable .env.example lists, set or commented out ("# NAME=value").
DOCUMENTED = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
# An environment-variable-like word: capitals and digits joined by underscores.
VARIABLE = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
PLACEHOLDERS = {"NAME_FILE"}  # "NAME_FILE=/path": the rule for every variable, not one of them


def test_every_variable_the_guide_names_is_in_env_example() -> None:
    named = set(VARIABLE.findall(GUIDE)) - PLACEHOLDERS
    assert len(named) > 40  # the guide's table really was read
    unknown = {name for name in named if name.removesuffix("_FILE") not in DOCUMENTED}
    assert not unknown, f"docs/deployment.md names variables that .env.example does not list: {sorted(unknown)}"


def test_the_queue_settings_are_in_the_guide_and_env_example() -> None:
    for name in ("PUMPTRACK_CELERY_QUEUES", "PUMPTRACK_CELERY_QUEUE_PREFIX"):
        assert name in DOCUMENTED and f"`{name}`" in GUIDE


def test_the_readme_production_section_links_to_the_guide() -> None:
    readme = (ROOT / "README.md").read_text()
    production = readme[readme.index("## Production") :]
    assert "(docs/deployment.md)" in production.split("\n## ", 1)[0]
