"""Set-up files agree with each other: conda users get what pip users get."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_every_pyproject_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra, reqs in project["optional-dependencies"].items():
        if extra != "all":
            wanted |= {_name(r) for r in reqs}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    have = {_name(r) for r in pip_section if not r.startswith("-e")}
    have |= {"torch" for d in env["dependencies"] if isinstance(d, str) and d.startswith("pytorch")}
    assert wanted - have == set(), f"missing from environment.yml: {sorted(wanted - have)}"
    assert "-e ." in pip_section


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make reproduce" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
