"""environment.yml (for conda users) and pyproject.toml name the same dependencies.

Names are compared after PEP 503 normalisation (lowercase; runs of ``-``, ``_``, ``.`` become one
``-``), so ``PyYAML`` and ``pyyaml`` are one package. ``python`` and ``pip`` are conda's own
entries and not dependencies of the project.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
CONDA_TOOLS = {"python", "pip"}


def normalise(name: str) -> str:
    """PEP 503 normalised form of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_requirements(pyproject: dict) -> dict[str, SpecifierSet]:
    """Runtime and every optional (extra) dependency of a parsed pyproject, by normalised name."""
    project = pyproject["project"]
    lines = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        lines.extend(extra)
    reqs = (Requirement(line) for line in lines)
    return {normalise(r.name): r.specifier for r in reqs if normalise(r.name) != normalise(project["name"])}


def environment_requirements(env: dict) -> dict[str, SpecifierSet]:
    """Dependencies of a parsed environment.yml (conda and pip sections), by normalised name.

    pip options and paths (``-e .[dev]``, ``-r file``, ``./dir``) are not dependency names and
    are skipped; conda match specs such as ``conda-forge::numpy>=1.24`` keep only their name.
    """
    found: dict[str, SpecifierSet] = {}
    for entry in env.get("dependencies", []):
        if isinstance(entry, dict):
            for line in entry.get("pip", []):
                line = line.split("#", 1)[0].strip()
                if not line or line.startswith(("-", ".", "/")):
                    continue
                req = Requirement(line)
                found[normalise(req.name)] = req.specifier
        else:
            spec = str(entry).split("::")[-1].strip()
            name = re.match(r"[A-Za-z0-9_.\-]+", spec).group(0)
            if normalise(name) not in CONDA_TOOLS:
                version = spec[len(name):].strip()
                found[normalise(name)] = SpecifierSet(version if version[:1] in "<>=!~" else "")
    return found


def compare_dependencies(pyproject: dict, env: dict) -> tuple[set[str], set[str]]:
    """``(missing from environment.yml, not in pyproject.toml)`` as sets of normalised names."""
    ours, theirs = set(pyproject_requirements(pyproject)), set(environment_requirements(env))
    return ours - theirs, theirs - ours


@pytest.fixture(scope="module")
def pyproject() -> dict:
    """The parsed pyproject.toml."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="module")
def environment() -> dict:
    """The parsed environment.yml."""
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def test_both_files_name_the_same_dependencies(pyproject, environment):
    """Every pyproject dependency (runtime and extras) is in environment.yml, and nothing else is."""
    missing, extra = compare_dependencies(pyproject, environment)
    assert not missing, f"in pyproject.toml but not in environment.yml: {sorted(missing)}"
    assert not extra, f"in environment.yml but not in pyproject.toml: {sorted(extra)}"
    assert len(pyproject_requirements(pyproject)) >= 10  # the parse really found the lists


def test_version_bounds_agree(pyproject, environment):
    """Where both files name a package, they give it the same version specifier."""
    ours, theirs = pyproject_requirements(pyproject), environment_requirements(environment)
    differ = {name: (str(ours[name]), str(theirs[name])) for name in ours.keys() & theirs.keys()
              if ours[name] != theirs[name]}
    assert not differ, f"pyproject vs environment.yml specifiers differ: {differ}"


def test_environment_installs_the_project_with_dev_extra(pyproject, environment):
    """environment.yml is named unifiedctx, uses conda-forge, the project's python, and ``-e .[dev]``."""
    assert environment["name"] == pyproject["project"]["name"] == "unifiedctx"
    assert environment["channels"] == ["conda-forge"]
    conda = [d for d in environment["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    python = next(d for d in conda if d.startswith("python"))
    assert python == "python" + pyproject["project"]["requires-python"]
    assert "pip" in conda
    assert "-e .[dev]" in pip


@pytest.mark.parametrize(("a", "b"), [("PyYAML", "pyyaml"), ("typing_extensions", "Typing-Extensions"),
                                      ("zope.interface", "zope-interface"), ("a__b", "A-._b")])
def test_names_are_normalised_per_pep_503(a, b):
    """Spellings that PEP 503 treats as one project compare equal."""
    assert normalise(a) == normalise(b)


def test_comparison_notices_a_missing_dependency(pyproject, environment):
    """Doctored copy: drop a pip entry from environment.yml and the comparison reports it."""
    env = copy.deepcopy(environment)
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    missing, extra = compare_dependencies(pyproject, environment)
    pip[:] = [line for line in pip if not line.lower().startswith("einops")]
    assert compare_dependencies(pyproject, env) == (missing | {"einops"}, extra)


def test_comparison_notices_an_extra_dependency(pyproject, environment):
    """Doctored copy: a new conda-level and a new pip-level package in environment.yml are reported."""
    env = copy.deepcopy(environment)
    missing, extra = compare_dependencies(pyproject, environment)
    env["dependencies"].insert(0, "conda-forge::scikit_learn>=1.3")
    next(d["pip"] for d in env["dependencies"] if isinstance(d, dict)).append("Flask_Cors>=4")
    assert compare_dependencies(pyproject, env) == (missing, extra | {"scikit-learn", "flask-cors"})


def test_comparison_notices_a_new_pyproject_dependency(pyproject, environment):
    """Doctored copy: a dependency added to a pyproject extra but not to environment.yml is reported."""
    doctored = copy.deepcopy(pyproject)
    doctored["project"]["optional-dependencies"]["dev"].append("Hypothesis[numpy]>=6; python_version>'3'")
    missing, extra = compare_dependencies(pyproject, environment)
    assert compare_dependencies(doctored, environment) == (missing | {"hypothesis"}, extra)


def test_comparison_ignores_spelling_differences(pyproject, environment):
    """Doctored copy: respelling pyyaml as ``PyYAML`` in environment.yml changes nothing."""
    env = copy.deepcopy(environment)
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pip[:] = ["PyYAML>=6" if line == "pyyaml>=6" else line for line in pip]
    assert "PyYAML>=6" in pip
    assert compare_dependencies(pyproject, env) == compare_dependencies(pyproject, environment)


def test_version_comparison_notices_a_changed_bound(pyproject, environment):
    """Doctored copy: a different torch bound in environment.yml is visible to the specifier check."""
    env = copy.deepcopy(environment)
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pip[:] = ["torch>=2.4" if line.startswith("torch") else line for line in pip]
    assert environment_requirements(env)["torch"] != pyproject_requirements(pyproject)["torch"]


def test_comparison_on_synthetic_files():
    """Self-contained: small pyproject/environment dicts that differ in known ways, both directions."""
    pyproject = {"project": {"name": "demo", "dependencies": ["Torch>=2", "ruamel.yaml"],
                             "optional-dependencies": {"dev": ["pytest>=8", "demo[extra]"]}}}
    env = {"dependencies": ["python>=3.10", "pip", "conda-forge::ruamel_yaml",
                            {"pip": ["-e .[dev]", "torch>=2", "Black==24.1  # formatter"]}]}
    assert compare_dependencies(pyproject, env) == ({"pytest"}, {"black"})
    env["dependencies"][-1]["pip"].append("PyTest>=8")
    pyproject["project"]["optional-dependencies"]["dev"].append("black")
    assert compare_dependencies(pyproject, env) == (set(), set())
