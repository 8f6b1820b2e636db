"""The config tree: where dataset files live, which dataset id each place stands for, loading every file
(a broken one is reported and skipped) and ``Registry``, the datasets of one tree loaded once.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

from pydantic import ValidationError

from .model import ConfigError, ConfigProblem, Dataset
from .options import DatasetFile
from .parse import MAX_CONFIG_BYTES, _inside, _problem, _read_yaml
from .validate import _build_dataset

KINDS = ("databridge", "knack", "airtable")
DEFAULT_CARTO_CONN = "carto_phl"


def default_config_dir() -> Path:
    return Path(os.environ.get("DATABRIDGE_CONFIG_DIR", "configs"))


def load_datasets(root: str | os.PathLike[str], default_carto_conn: str = DEFAULT_CARTO_CONN) -> tuple[list[Dataset], list[ConfigProblem]]:
    """Discover and validate every dataset under ``root``; return the datasets and all problems found."""
    root = Path(root)
    datasets: list[Dataset] = []
    problems: list[ConfigProblem] = []
    if not root.is_dir():
        return [], [ConfigProblem(str(root), "-", "config directory does not exist")]
    seen: dict[str, str] = {}
    tables: dict[tuple[str, str, str], Dataset] = {}
    for path in sorted(_config_files(root)):
        try:
            dataset = _load_file(root, path, default_carto_conn)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if dataset.id in seen:
            problems.append(ConfigProblem(str(path), "-", f"duplicate dataset id {dataset.id!r} (also {seen[dataset.id]})"))
            continue
        if dataset.publish:  # two datasets swapping one table would each be "published" while it holds one
            where = (dataset.dest_conn, dataset.dest_schema or "", dataset.dest_table)
            other = tables.get(where)
            if other is not None:
                problems.append(ConfigProblem(str(path), "destination.table", f"{dataset.dest_conn}:{(dataset.dest_schema + '.') if dataset.dest_schema else ''}"
                                              f"{dataset.dest_table} is also written by {other.id} ({other.path}); give one a destination.table"))
                continue
            tables[where] = dataset
        seen[dataset.id] = str(path)
        datasets.append(dataset)
    return datasets, problems


def dataset_id_for(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> str | None:
    """The dataset id a config file at ``path`` stands for (from its place in the tree), or None."""
    try:
        kind, *parts = Path(path).relative_to(root).parts
    except ValueError:
        return None
    table = Path(path).name.split(".", 1)[0]
    if kind == "knack" and len(parts) == 3:
        return f"{parts[1]}__{table}__{parts[0]}"
    if kind in KINDS and kind != "knack" and len(parts) == 2:
        return f"{parts[0]}__{table}"
    return None


def _config_files(root: Path) -> list[Path]:
    return [p for kind in KINDS for p in (root / kind).rglob("*") if p.suffix.lower() in (".yml", ".yaml") and (p.is_file() or p.is_symlink())]


def _load_file(root: Path, path: Path, default_carto_conn: str) -> Dataset:
    where = str(path)
    kind, *parts = path.relative_to(root).parts
    expected_depth = 3 if kind == "knack" else 2
    if len(parts) != expected_depth:
        layout = "knack/<carto_env>/<dept>/<table>.yml" if kind == "knack" else f"{kind}/<dept>/<table>.yml"
        raise ConfigError([ConfigProblem(where, "-", f"file is not at {layout}")])
    table = path.name.split(".", 1)[0]
    env, dept = (parts[0], parts[1]) if kind == "knack" else (None, parts[0])
    if not _inside(path, root):  # a symlink (of the file or a folder) out of the tree
        raise ConfigError([ConfigProblem(where, "-", "resolves outside the config tree (a symlink?); configs must live in the tree")])
    if not path.is_file():
        raise ConfigError([ConfigProblem(where, "-", "file is a symlink to nothing")])
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError([ConfigProblem(where, "-", f"file is {size:,} bytes, over the {MAX_CONFIG_BYTES // 1024} KiB limit for a config")])
    raw = _read_yaml(path)
    try:
        spec = DatasetFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_problem(where, error) for error in exc.errors()]) from None
    return _build_dataset(where, kind, dept, table, env, spec, default_carto_conn)


class Registry:
    """The datasets of one config tree, loaded once. A broken file breaks only its own dataset: the valid
    datasets are all there, ``problems`` lists the rest (``strict=True`` raises them all instead, as
    ``validate`` reports them); asking for a broken or unknown dataset raises a clear error."""

    def __init__(self, root: str | os.PathLike[str], default_carto_conn: str = DEFAULT_CARTO_CONN, strict: bool = False):
        self.root = Path(root)
        datasets, problems = load_datasets(self.root, default_carto_conn)
        if strict and problems:
            raise ConfigError(problems)
        self.problems = problems
        self._by_id = {d.id: d for d in datasets}

    def broken_files(self) -> dict[str, list[ConfigProblem]]:
        """Each broken config file (or the root, when it is missing) and its problems, in file order."""
        files: dict[str, list[ConfigProblem]] = {}
        for problem in self.problems:
            files.setdefault(problem.path, []).append(problem)
        return files

    def broken_ids(self) -> dict[str, list[ConfigProblem]]:
        """Dataset id → the problems of its file, for the broken files whose place names a dataset."""
        found: dict[str, list[ConfigProblem]] = {}
        for path, problems in self.broken_files().items():
            dataset_id = dataset_id_for(self.root, path)
            if dataset_id and dataset_id not in self._by_id:
                found.setdefault(dataset_id, []).extend(problems)
        return found

    def __iter__(self):
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, dataset_id: str) -> Dataset:
        try:
            return self._by_id[dataset_id]
        except KeyError:
            broken = self.broken_ids().get(dataset_id)
            if broken:
                raise ConfigError(broken) from None
            close = difflib.get_close_matches(dataset_id, list(self._by_id), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"no dataset {dataset_id!r} in {self.root}{hint}") from None
