"""Whether git would take a data folder into every experiment.

``dvc exp run`` commits the workspace's untracked files with each experiment, unless git
ignores them.  A folder of photos inside the project that neither DVC tracks (``dvc add``
writes it into a ``.gitignore``) nor ``.gitignore`` names therefore lands in git, photo by
photo, with every run: a slow run, a large ``.git``, and ``dvc exp push`` sends the photos to
the git remote.  The split stage warns; nothing here changes git's state."""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

GIT_SECONDS = 30  # a git status of a very large folder; past it, no warning rather than a wait


def files_git_would_commit(folder: str | Path, project: str | Path = ".") -> int:
    """How many files under ``folder`` git sees as untracked and not ignored in ``project``'s
    repository: what ``dvc exp run`` would commit with an experiment.  0 where there is no such
    file, ``folder`` lies outside ``project``, or git or a repository is missing."""
    folder, project = Path(folder).resolve(), Path(project).resolve()
    if not folder.is_relative_to(project) or folder == project:
        return 0
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--others", "--exclude-standard", "-z", "--",
             str(folder.relative_to(project))],
            cwd=project, capture_output=True, timeout=GIT_SECONDS, check=True)
    except (OSError, subprocess.SubprocessError):
        return 0
    return listed.stdout.count(b"\0")


def warning(data_dir: str | Path, key: str = "data.dir") -> str | None:
    """The split stage's warning when git would take ``data_dir``'s files into experiments."""
    count = files_git_would_commit(data_dir)
    if not count:
        return None
    folder = shlex.quote(str(data_dir).rstrip("/"))
    return (f"{key} {data_dir} is inside the project, and neither DVC nor .gitignore keeps its "
            f"{count} file(s) out of git: every dvc exp run commits them into git with the "
            f"experiment. Track the folder with DVC: dvc add {folder} && git add "
            f"{shlex.quote(str(data_dir).rstrip('/') + '.dvc')} .gitignore "
            "(docs/pipeline.md#your-image-folder)")
