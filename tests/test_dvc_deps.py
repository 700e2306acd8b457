"""dvc.yaml's code deps against what each stage really imports: DVC trusts the deps blindly, so
a project file a stage imports (directly or through other project files) and its deps do not
cover would let `dvc repro` reuse stale outputs after that file changed."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

SRC = ROOT / "src"
PACKAGE = "finetuner"
# Imports inside a function body that the walk leaves out, each with the reason: none now
# (params.py imports no model code; finetuner.arch_params holds the checks against the
# registry, and test_params checks that split and preprocess load their params without it).
LAZY_EXEMPT: set[tuple[str, str]] = set()


def module_file(name: str) -> Path | None:
    """The file of module ``name`` under src/ (a package's __init__.py), None if not ours."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    path = SRC.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (packages above it included), absolute names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    relative_to = path.relative_to(SRC).as_posix() if path.is_relative_to(SRC) else None
    package = (".".join(path.relative_to(SRC).parent.parts) if relative_to else "")
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in parts + base.split(".") if p)
            found = [base] + [f"{base}.{alias.name}" for alias in node.names]
            if (relative_to, base) in LAZY_EXEMPT:
                continue
        else:
            continue
        for name in found:
            if (relative_to, name) in LAZY_EXEMPT:
                continue
            parts = name.split(".")
            names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return names


def project_imports(script: Path) -> set[str]:
    """Project files ``script`` imports, transitively, as paths relative to the root."""
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        for name in imported_modules(path):
            file = module_file(name)
            if file is not None and file not in seen:
                seen.add(file)
                todo.append(file)
    return {p.relative_to(ROOT).as_posix() for p in seen}


def stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("name", sorted(stages()))
def test_each_stage_depends_on_every_project_file_it_imports(name):
    stage = stages()[name]
    script = stage["cmd"].split()[1]
    deps = [d for d in stage["deps"] if isinstance(d, str)]
    assert script in deps, f"{name}: its own script {script} is not a dep"
    missing = sorted(p for p in project_imports(ROOT / script) if not covered(p, deps))
    assert not missing, f"dvc.yaml stage {name!r} imports {missing} but does not depend on them"


def test_split_and_preprocess_do_not_rerun_for_training_or_model_code():
    for name in ("split", "preprocess"):
        deps = stages()[name]["deps"]
        for code in ("src/finetuner/training/loop.py", "src/finetuner/models/registry.py",
                     "src/finetuner/evaluation/metrics.py"):
            assert not covered(code, deps), f"{name} would rerun when {code} changes"


def test_every_training_file_reruns_finetune_and_none_reruns_split_or_preprocess():
    files = sorted(p.relative_to(ROOT).as_posix() for p in (SRC / PACKAGE / "training").glob("*.py"))
    assert "src/finetuner/training/batches.py" in files and "src/finetuner/training/prefix.py" in files
    for path in files:
        assert covered(path, stages()["finetune"]["deps"]), f"finetune ignores {path}"
        for name in ("split", "preprocess"):
            assert not covered(path, stages()[name]["deps"]), f"{name} would rerun for {path}"


def test_the_walk_sees_relative_and_package_imports():
    files = project_imports(ROOT / "stages" / "finetune.py")
    assert "src/finetuner/training/batches.py" in files  # from finetuner.training.batches import
    assert "src/finetuner/data/rows.py" in files       # relative, two levels down
    assert "src/finetuner/models/__init__.py" in files  # a package's __init__ runs on import


def test_every_interpolated_param_in_a_command_is_one_quoted_argument():
    """`${data.dir}` reaches the stage as one argument, spaces and all (`data/my photos`, which
    test_e2e.py's project uses); params.py refuses the characters a shell reads inside double
    quotes."""
    import re
    import shlex
    for name, stage in stages().items():
        command = stage["cmd"]
        for match in re.finditer(r"\$\{[^}]+\}", command):
            assert command[match.start() - 1] == '"' == command[match.end()], (name, command)
        spaced = command.replace("${data.dir}", "my photos")
        assert len(shlex.split(spaced)) == len(shlex.split(command)), name


def test_the_audit_reruns_for_neither_augmentation_nor_the_training_views():
    """The audit decodes its evaluation views from the images (stages/audit.py), so a change
    of augmentation (preprocess.*), which rewrites data/prepared, reruns preprocess, finetune
    and evaluate, not the audit; a new input size still does (data/input_spec.json)."""
    audit = stages()["audit"]
    assert not any(dep.startswith("data/prepared") for dep in audit["deps"])
    for code in ("augment.py", "preprocess.py", "prepared.py"):  # nor the augmentation code
        assert not covered(f"src/finetuner/data/{code}", audit["deps"]), code
    assert not any(str(param).startswith("preprocess") for param in audit["params"])
    assert {"data/split", "data/input_spec.json", "${data.dir}"} <= set(audit["deps"])
    assert '"${data.dir}" data/split data/input_spec.json' in audit["cmd"]


# Params a stage script reads that are not results-bearing, or derived from listed ones.
PARAM_EXEMPT = {"preprocess.workers": "decoding processes: the speed, not the arrays",
                "probe.model_layers": "Params.probe.model_layers: probe.layers resolved"}


def params_read(script: Path) -> set[str]:
    """Dotted params keys ``script`` reads: ``params.a.b`` chains, and ``x.b`` after
    ``x = params.a`` (a simple alias)."""
    tree = ast.parse(script.read_text(encoding="utf-8"))

    def chain(node) -> list[str] | None:
        names = []
        while isinstance(node, ast.Attribute):
            names.insert(0, node.attr)
            node = node.value
        return [node.id, *names] if isinstance(node, ast.Name) else None

    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
                node.targets[0], ast.Name) and (found := chain(node.value)) and \
                found[0] == "params" and len(found) > 1:
            aliases[node.targets[0].id] = ".".join(found[1:])
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    reads = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:  # whole chains only
            found = chain(node)
            if found and found[0] == "params" and len(found) > 1:
                reads.add(".".join(found[1:]))
            elif found and found[0] in aliases and len(found) > 1:
                reads.add(".".join([aliases[found[0]], *found[1:]]))
    return reads


@pytest.mark.parametrize("name", sorted(n for n, s in stages().items() if s.get("params")))
def test_each_stage_lists_every_param_its_script_reads(name):
    """DVC reruns a stage only for the params it lists: a param the script reads and does not
    list (evaluate's `threads` and `device`, which its `cost` depends on) leaves its outputs
    stale when that param changes."""
    stage = stages()[name]
    if WHOLE_FILE in stage["params"]:
        return  # every key (evaluate: test_only_evaluate_lists_the_whole_params_file)
    listed = [str(p) for p in stage["params"]]
    script = ROOT / stage["cmd"].split()[1]
    reads = params_read(script)  # and in the project code it imports (a `params` passed on)
    # less the validation, which reads every key it checks (not what the outputs depend on);
    # arch_params.image_size resolves preprocess.image_size for model.arch, both listed by
    # the stage that calls it (input_spec)
    for path in project_imports(script) - {"src/finetuner/params.py",
                                           "src/finetuner/arch_params.py"}:
        reads |= params_read(ROOT / path)
    assert reads, f"{name}: found no params read (is the walk broken?)"
    missing = sorted(r for r in reads - set(PARAM_EXEMPT) if not any(
        r == key or r.startswith(key + ".") or key.startswith(r + ".") for key in listed))
    assert not missing, f"dvc.yaml stage {name!r} reads params {missing} but does not list them"


WHOLE_FILE = {"params.yaml": None}  # `- params.yaml:` in a stage's params: every key


def test_only_evaluate_lists_the_whole_params_file():
    """A key no stage lists would rerun nothing (`dvc exp run -S +learning_rate=0.1`); evaluate
    lists every key, so it reruns and its params check refuses the key (tests/test_e2e.py runs
    it). Only evaluate: it runs after every other change anyway, and takes seconds."""
    assert [n for n, s in stages().items() if WHOLE_FILE in s.get("params", [])] == ["evaluate"]


def test_the_params_walk_sees_chains_and_aliases():
    reads = params_read(ROOT / "stages" / "preprocess.py")
    assert {"preprocess.train_views", "seed"} <= reads  # p = params.preprocess; p.train_views
    assert "threads" in params_read(ROOT / "stages" / "evaluate.py")
    assert "train.refit" in params_read(ROOT / "src" / "finetuner" / "training" / "strategy.py")


def test_no_stage_after_split_reruns_for_the_split_code():
    """They read the split's manifests through data/manifest.py, not its code: an edit of
    split.py reruns the split, and the rest only when the manifests it writes change."""
    for name in ("preprocess", "audit", "finetune", "evaluate"):
        assert not covered("src/finetuner/data/split.py", stages()[name]["deps"]), name
        assert covered("src/finetuner/data/manifest.py", stages()[name]["deps"]), name


def test_the_finetune_stage_keys_its_checkpoint_and_resume_state_by_its_own_params():
    """The params finetune records and a resume must match are the ones dvc.yaml reruns it
    for: an edit of evaluate.* keeps a killed run's state, an edit of lr does not."""
    from conftest import load_stage
    from finetuner.params import parse_params
    stage = load_stage("finetune")
    assert list(stage.PARAMS) == [str(p) for p in stages()["finetune"]["params"]]
    base = stage.training_params(parse_params({}))
    assert stage.training_params(parse_params({"evaluate": {"gallery_size": 4}})) == base
    assert stage.training_params(parse_params({"lr": 0.5}))["lr"] == 0.5 != base["lr"]


@pytest.mark.parametrize("name", sorted(stages()))
def test_no_stage_depends_on_project_code_it_does_not_import(name):
    """A code dep the stage does not import reruns it for nothing (evaluate kept training/
    freeze.py after the freezing rule moved onto the model); a folder dep counts as imported
    only when every module in it is (the audit depended on all of models/ for no checkpoint)."""
    stage = stages()[name]
    imports = project_imports(ROOT / stage["cmd"].split()[1])
    code = [dep for dep in stage["deps"] if isinstance(dep, str) and dep.startswith("src/")]
    extra = [dep for dep in code if not any(covered(path, [dep]) for path in imports)]
    assert not extra, f"dvc.yaml stage {name!r} depends on {extra} but imports none of it"
    unused = sorted(path.relative_to(ROOT).as_posix() for dep in code if (ROOT / dep).is_dir()
                    for path in (ROOT / dep).rglob("*.py")
                    if path.relative_to(ROOT).as_posix() not in imports)
    assert not unused, (f"dvc.yaml stage {name!r} depends on folders holding {unused}, which "
                        "it does not import: list the files it does")


def test_dvc_hashes_no_bytecode_under_a_folder_dep():
    """DVC reads .dvcignore, not .gitignore: without the bytecode patterns a folder dep's hash
    would include __pycache__, so importing a module (or a new Python) would rerun the stage."""
    from dvc.repo import Repo

    folders = {dep for stage in stages().values() for dep in stage.get("deps", [])
               if isinstance(dep, str) and (ROOT / dep).is_dir() and dep.startswith("src/")}
    assert "src/finetuner/models" in folders
    ignore = Repo(str(ROOT)).dvcignore
    for folder in sorted(folders):
        for name in ("__pycache__/checkpoint.cpython-312.pyc", "stray.pyc"):
            assert ignore.is_ignored_file(str(ROOT / folder / name)), f"DVC hashes {folder}/{name}"
        assert not ignore.is_ignored_file(str(ROOT / folder / "__init__.py"))
