"""Whether git would take a data folder into every experiment.

``dvc exp run`` commits each stage's dependencies that git does not track into the
experiment's commit, unless git ignores them, and ``data.dir`` is the split stage's.  A folder
of photos inside the project that neither DVC tracks (``dvc add`` writes it into a
``.gitignore``) nor ``.gitignore`` names therefore lands in git, photo by photo, with every run:
a slow run, a large ``.git``, and ``dvc exp push`` sends the photos to the git remote.  The split
stage warns; nothing here changes git's state."""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

GIT_SECONDS = 30  # a git status of a very large folder; past it, no warning rather than a wait


def _git_files(project: Path, relative: Path, *options: str) -> int | None:
    """How many files ``git ls-files OPTIONS`` lists under ``relative`` (a literal path, never
    read as a pathspec's magic); None where git or a repository is missing or fails."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", *options, "-z", "--", f":(literal){relative.as_posix()}"],
            cwd=project, capture_output=True, timeout=GIT_SECONDS, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return listed.stdout.count(b"\0")


def files_git_would_commit(folder: str | Path, project: str | Path = ".") -> int:
    """How many files under ``folder`` git sees as untracked and not ignored in ``project``'s
    repository: what ``dvc exp run`` would commit with an experiment.  0 where there is no such
    file, ``folder`` lies outside ``project`` or is a symbolic link (git and DVC keep the link,
    not what it points to), or git or a repository is missing."""
    if Path(folder).is_symlink():
        return 0
    folder, project = Path(folder).resolve(), Path(project).resolve()
    if not folder.is_relative_to(project) or folder == project:
        return 0
    return _git_files(project, folder.relative_to(project), "--others", "--exclude-standard") or 0


def warning(data_dir: str | Path, key: str = "data.dir") -> str | None:
    """The split stage's warning when git would take ``data_dir``'s files into experiments,
    with the commands that hand the folder to DVC (first out of git, where git tracks some)."""
    count = files_git_would_commit(data_dir)
    if not count:
        return None
    name = str(data_dir).rstrip("/")
    folder, dvc_file = shlex.quote(name), shlex.quote(name + ".dvc")
    project = Path(".").resolve()
    tracked = _git_files(project, Path(name).resolve().relative_to(project))  # by git already
    first = f"git rm -r -q --cached {folder} && " if tracked else ""
    return (f"{key} {data_dir} is inside the project, and neither DVC nor .gitignore keeps its "
            f"{count} new file(s) out of git: every dvc exp run commits them into git with the "
            f"experiment. Track the folder with DVC: {first}dvc add {folder} && git add "
            f"{dvc_file} .gitignore (docs/pipeline.md#your-image-folder)")
