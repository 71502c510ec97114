"""Lay out the source folders as the installed package `otrules`, for mypy (`make lint`).

engine/, schemas/, consumers/ and rules/ install as otrules.engine and so on ([tool.setuptools]
package-dir in pyproject.toml). The editable install maps them with an import hook, which mypy
cannot follow, so mypy reads build/typecheck/otrules/ instead: symbolic links to the files and
folders in the checkout (not copies), placed as the package-dir mapping says. Run it from the
repository root; it rebuilds the tree each time, so new files are always seen.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

TREE = Path("build/typecheck")


def package_dirs(pyproject: Path) -> dict[str, Path]:
    """The package-dir mapping: package name -> its folder in the checkout."""
    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    return {package: (pyproject.parent / folder).resolve() for package, folder in mapping.items()}


def build(root: Path, tree: Path) -> None:
    mapping = package_dirs(root / "pyproject.toml")
    if tree.exists():
        shutil.rmtree(tree)
    for package in sorted(mapping, key=lambda name: name.count(".")):  # parents before children
        folder, target = mapping[package], tree.joinpath(*package.split("."))
        children = {name.rpartition(".")[2] for name in mapping if name.rpartition(".")[0] == package}
        if not children:
            target.symlink_to(folder, target_is_directory=True)
            continue
        target.mkdir(parents=True)  # a mapped child lives elsewhere: link the entries one by one
        for entry in folder.iterdir():
            if entry.name not in children and entry.name != "__pycache__":
                target.joinpath(entry.name).symlink_to(entry)


if __name__ == "__main__":
    build(Path.cwd(), TREE)
