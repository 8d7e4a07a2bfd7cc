"""pyproject is the source of truth: environment.yml, the Makefile, README and CI must agree with it."""
from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PYPI = {"pytorch": "torch", "py-opencv": "opencv-python-headless", "pyyaml": "pyyaml"}


def pyproject_requirements() -> dict[str, Requirement]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    for extra in meta["optional-dependencies"].values():
        reqs += extra
    return {canonicalize_name(Requirement(r).name): Requirement(r) for r in reqs}


def environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def makefile_var(name: str) -> str:
    m = re.search(rf"^{name}\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert m, f"Makefile defines no {name}"
    return m.group(1)


def test_conda_dependencies_are_pyproject_dependencies_with_the_same_bounds():
    reqs = pyproject_requirements()
    conda = [d for d in environment()["dependencies"] if isinstance(d, str)]
    for dep in conda:
        name = re.split(r"[=<>!]", dep, maxsplit=1)[0]
        if name in ("python", "pip"):
            continue
        pypi = canonicalize_name(CONDA_TO_PYPI.get(name, name))
        assert pypi in reqs, f"environment.yml lists {name}, which pyproject.toml does not declare"
        bound = dep[len(name):]
        assert bound == str(reqs[pypi].specifier), \
            f"{name}: environment.yml says {bound!r}, pyproject {reqs[pypi].specifier}"


def test_environment_pip_section_installs_the_package_with_all_extras_last():
    pip = next(d["pip"] for d in environment()["dependencies"] if isinstance(d, dict))
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]) - {"sam2"}
    m = re.fullmatch(r"-e \.\[([\w,]+)\]", pip[-1])
    assert m, f"the pip section must end with '-e .[...]', not {pip[-1]!r}"
    assert set(m.group(1).split(",")) == extras


def test_torch_and_sam2_pins_agree_everywhere():
    pip = next(d["pip"] for d in environment()["dependencies"] if isinstance(d, dict))
    assert makefile_var("TORCH_PIN") in pip
    assert makefile_var("TORCH_PIN").startswith("torch==")
    assert Requirement(makefile_var("TORCH_PIN")).specifier.contains(
        "2.13.0") and pyproject_requirements()["torch"].specifier.contains("2.13.0")
    assert str(pyproject_requirements()["sam2"]) == makefile_var("SAM2_PIN")
    assert makefile_var("SAM2_PIN") in (ROOT / "environment.yml").read_text()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.strip().startswith(("#", "set ", "cd "))]
    assert ci == ["make test"]
    assert re.search(r"^make test$", readme, re.M), "README must show the test command on its own line"
    assert re.search(r"^make bench$", readme, re.M), "README must show the main-job command on its own line"


def test_console_script_points_at_cli_main():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["scripts"]["foodlab"] == "foodlab.cli:main"
