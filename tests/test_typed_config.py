"""typed_config: YAML into nested dataclasses, for any schema (params.py's is tested in
test_params.py)."""
import pytest

from finetuner.typed_config import ParamsError


def test_typed_config_builds_any_schema_with_its_own_aliases_and_value_check():
    """typed_config knows no finetuner key: a schema of its own gets types, did-you-mean from
    its own root and aliases, and its value check runs on every value, nested ones too."""
    from dataclasses import dataclass, field

    from finetuner.typed_config import Schema, build

    @dataclass
    class Inner:
        depth: int = 1

    @dataclass
    class Root:
        rate: float = 0.1
        inner: Inner = field(default_factory=Inner)

    def no_sentinel(key, value):
        if value == "TODO":
            raise ParamsError(f"params.yaml: '{key}' is TODO")
    schema = Schema(Root, {"speed": "rate"}, no_sentinel)
    assert build(schema, {"rate": "1e-3", "inner": {"depth": 4}}) == Root(0.001, Inner(4))
    with pytest.raises(ParamsError, match="unknown key 'speed'; did you mean 'rate'"):
        build(schema, {"speed": 1})
    with pytest.raises(ParamsError, match="unknown key 'inner.dpeth'; did you mean 'inner.depth'"):
        build(schema, {"inner": {"dpeth": 2}})
    with pytest.raises(ParamsError, match="'inner.depth' is TODO"):
        build(schema, {"inner": {"depth": "TODO"}})
    with pytest.raises(ParamsError, match="'inner.depth' is True .bool.; expected an integer"):
        build(schema, {"inner": {"depth": True}})
