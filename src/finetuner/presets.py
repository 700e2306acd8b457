"""The presets: ``conf/`` composed into the concrete values of ``params.yaml``.

``conf/config.yaml`` lists every key of params.yaml with what it means; a key it marks ``???``
is set by the chosen preset, ``conf/preset/<name>.yaml`` (which may set any other key too).
DVC does the composition itself (``hydra.enabled`` in .dvc/config): ``dvc exp run -S
preset=photos -S lr=0.001`` composes conf/ with those overrides and writes a params.yaml of
plain values before the run, so `dvc exp show` and `dvc params diff` show what ran.  This
module composes the same way, with the same library (Hydra, a DVC dependency), for the
committed params.yaml that `dvc repro` runs and for Python code without DVC:

    python -m finetuner.presets                     # writes params.yaml: the demo
    python -m finetuner.presets photos lr=0.001     # the photos preset, lr overridden
    python -m finetuner.presets --check             # exit 1 when params.yaml is not conf/'s demo
    python -m finetuner.presets photos -o -         # print it

Invariant: :func:`params_yaml` of no preset is byte for byte the committed params.yaml below
its header, and its body is what DVC writes for ``dvc exp run -S preset=demo``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import yaml

from .io import atomic_path
from .params import Params, ParamsError, parse_params

# relative to the working directory, as params.yaml is (and as DVC finds it: the repo's root)
CONF = Path("conf")

HEADER = """\
# GENERATED from conf/, do not edit: python -m finetuner.presets{args}
# Every key, what it means and its allowed values: conf/config.yaml and docs/params.md; the
# preset's values: conf/preset/{preset}.yaml.  Edit conf/ and rerun that command, then
# `dvc repro`; or run `dvc exp run -S key=value` / `-S preset=photos`, which composes conf/ the
# same way (DVC's Hydra composition) and writes this file without these comments.
"""


def preset_names(conf: Path = CONF) -> list[str]:
    """The presets conf/ offers: one ``conf/preset/<name>.yaml`` each."""
    return sorted(p.stem for p in (Path(conf) / "preset").glob("*.yaml"))


def _composed(preset: str | None, overrides: Sequence[str], conf: Path):
    """The OmegaConf config Hydra composes from ``conf`` (as DVC's ``compose_and_dump``)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    conf = Path(conf).resolve()
    if not (conf / "config.yaml").is_file():
        raise ParamsError(f"{conf}/config.yaml: not found; the presets live in the project's "
                          "conf/ folder")
    if preset is not None and preset not in preset_names(conf):
        raise ParamsError(f"preset {preset!r} is unknown; conf/preset/ has "
                          f"{', '.join(preset_names(conf))}")
    chosen = [f"preset={preset}"] if preset is not None else []
    _check_keys(overrides)
    try:
        with initialize_config_dir(str(conf), version_base=None):
            config = compose(config_name="config", overrides=[*chosen, *overrides])
        OmegaConf.resolve(config)
    except (HydraException, OmegaConfBaseException) as error:
        raise ParamsError(f"{conf}: {str(error).splitlines()[0]}") from None
    except yaml.YAMLError as error:  # a file of conf/ that Hydra could not read; names it
        raise ParamsError(f"{conf}: not valid YAML: {error}") from None
    return config


def _check_keys(overrides: Sequence[str]) -> None:
    """An override of a key params.yaml does not have fails as params.yaml itself would: with
    the closest valid names (Hydra alone says only that it cannot override it)."""
    for override in overrides:
        key = override.partition("=")[0].lstrip("+~")
        if key == "preset" or not key:
            continue
        nested: dict = {}
        node = nested
        *outer, leaf = key.split(".")
        for part in outer:
            node = node.setdefault(part, {})
        node[leaf] = {}
        try:
            parse_params(nested)
        except ParamsError as error:
            if "unknown key" in str(error):
                raise
        # other errors: the key exists (its value {} is no value); compose checks the rest


def compose(preset: str | None = None, overrides: Sequence[str] = (),
            conf: Path = CONF) -> dict:
    """params.yaml's mapping for ``preset`` (None: conf/config.yaml's default, the demo) and
    Hydra ``overrides`` such as ``"lr=0.001"``, composed from ``conf`` exactly as
    `dvc exp run -S preset=NAME -S lr=0.001` composes it.  Plain data, not validated:
    :func:`preset_params` validates."""
    from omegaconf import OmegaConf
    return OmegaConf.to_container(_composed(preset, overrides, conf))


def preset_params(preset: str | None = None, overrides: Sequence[str] = (),
                  conf: Path = CONF) -> Params:
    """:func:`compose`, typed and validated (:func:`finetuner.params.parse_params`: what needs
    no model code)."""
    return parse_params(compose(preset, overrides, conf))


def params_yaml(preset: str | None = None, overrides: Sequence[str] = (),
                conf: Path = CONF) -> str:
    """The text of params.yaml for ``preset`` and ``overrides``: a header that says where it
    comes from, then the composed YAML as DVC writes it (``OmegaConf.to_yaml``)."""
    from omegaconf import OmegaConf
    config = _composed(preset, overrides, conf)
    args = "".join(f" {a}" for a in ([preset] if preset else []) + list(overrides))
    return HEADER.format(args=args, preset=config.get("preset")) + OmegaConf.to_yaml(config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m finetuner.presets",
        description="Write params.yaml from conf/ (a preset and key=value overrides), as "
                    "`dvc exp run -S` does before a run.")
    parser.add_argument("preset", nargs="?", help="a conf/preset name (default: the demo)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. lr=0.001")
    parser.add_argument("-o", "--output", default="params.yaml",
                        help="default: params.yaml; '-': print it")
    parser.add_argument("--conf", default=str(CONF), help=f"default: {CONF}/ (here)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when the output differs from the composition")
    args = parser.parse_args(argv)
    if args.preset and "=" in args.preset:  # only overrides were given
        args.overrides, args.preset = [args.preset, *args.overrides], None
    try:
        text = params_yaml(args.preset, args.overrides, Path(args.conf))
    except ParamsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    raw = yaml.safe_load(text)
    try:
        params = parse_params(raw)
    except ParamsError as error:  # a value of conf/ (or an override): name where it comes from
        preset = args.preset or raw.get("preset")
        print(f"error: {error} (composed from {args.conf}/config.yaml, "
              f"{args.conf}/preset/{preset}.yaml and the overrides: fix it there)",
              file=sys.stderr)
        return 2
    if args.output == "-":
        print(text, end="")
        return 0
    output = Path(args.output)
    if args.check:
        same = output.is_file() and output.read_text(encoding="utf-8") == text
        print(f"{output}: {'up to date with' if same else 'DIFFERS from'} conf/"
              + ("" if same else "; rerun without --check to rewrite it"))
        return 0 if same else 1
    with atomic_path(output) as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(f"wrote {output}: preset {params.preset}, lr {params.lr:g}, {params.model.arch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
