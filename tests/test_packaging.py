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


def test_the_repository_cites_only_files_it_ships():
    """No reference to the brief a clone does not have; every `docs/methods.md §n` the code cites exists."""
    sections = set(re.findall(r"^## (\d+)\.", (ROOT / "docs" / "methods.md").read_text(), flags=re.M))
    cited, stray = set(), []
    for path in [ROOT / "README.md", ROOT / "Makefile", *ROOT.glob("docs/*.md"), *ROOT.glob("kdlib/**/*.py"),
                 *ROOT.glob("tests/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("configs/**/*.yaml"),
                 *ROOT.glob("notebooks/*.ipynb")]:
        text = path.read_text()
        if path.name != "test_packaging.py" and re.search(r"SPEC §|SPEC section|\.\./shared/", text):
            stray.append(str(path.relative_to(ROOT)))
        for group in re.findall(r"docs/methods\.md ((?:§\d+(?:-\d+)?(?:, )?)+)", text):
            cited |= set(re.findall(r"\d+", group))
    assert stray == [], f"cite files a clone does not have: {stray}"
    assert cited and cited <= sections, f"cited sections missing from docs/methods.md: {sorted(cited - sections)}"
