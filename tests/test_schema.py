"""The one schema mechanism (hbnn.schema): dict -> dataclass with type checks, and back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from hbnn.errors import ConfigError
from hbnn.schema import NonFiniteFloat, Schema, check, check_choice


@dataclass
class Inner(Schema):
    bits: Any = 1
    mode: str = "a"

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, ("a", "b"))

    @classmethod
    def from_value(cls, value: Any, where: str) -> "Inner":
        return cls(bits=value)


@dataclass
class Outer(Schema):
    name: str
    lr: float = 0.1
    steps: int = 1
    inner: Inner | None = None
    table: dict[str, Inner | None] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        check(self.steps >= 1, "steps", self.steps, "an integer >= 1")


def test_coercion_nesting_short_forms_and_round_trip():
    out = Outer.from_dict({"name": "x", "lr": "1e-3", "steps": 2.0, "inner": 3, "table": {"k": {"mode": "b"}, "n": None},
                           "sizes": [1, 2.0]})
    assert out == Outer(name="x", lr=1e-3, steps=2, inner=Inner(bits=3), table={"k": Inner(mode="b"), "n": None},
                        sizes=[1, 2])
    assert Outer.from_dict(out.to_dict()) == out
    assert out.to_dict()["table"] == {"k": {"bits": 1, "mode": "b"}, "n": None}
    assert Outer.from_dict(out) is out


def test_as_written_keeps_the_given_mapping():
    data = {"name": "x", "inner": 2}
    out = Outer.from_dict(data)
    assert out.as_written() == data and out.as_written() is not data
    assert Outer(name="y").as_written() is None


@pytest.mark.parametrize("data, message", [
    ({"name": "x", "lrr": 1}, "unknown key lrr; allowed in Outer: name, lr, steps"),
    ({}, "Outer: missing key name"),
    ({"name": "x", "steps": "many"}, "steps: invalid value 'many'; allowed: an integer"),
    ({"name": "x", "steps": 0}, "steps: invalid value 0; allowed: an integer >= 1"),
    ({"name": "x", "inner": {"mode": "c"}}, r"inner.mode: invalid value 'c'; allowed: a, b"),
    ({"name": "x", "table": {"k": {"moed": "a"}}}, r"unknown key table.k.moed; allowed in table.k: bits, mode"),
    ({"name": 3}, "name: invalid value 3; allowed: a string"),
])
def test_errors_name_the_key_the_value_and_what_is_allowed(data, message):
    with pytest.raises(ConfigError, match=message):
        Outer.from_dict(data)


def test_a_non_mapping_without_a_short_form_is_an_error():
    with pytest.raises(ConfigError, match="sec: expected a mapping of settings, got 5"):
        Outer.from_dict(5, "sec")


@dataclass
class Numbers(Schema):
    x: float = 0.0
    n: int = 0
    flag: bool = False
    label: str = ""
    anything: NonFiniteFloat = 0.0


@pytest.mark.parametrize("key, value, allowed", [
    ("x", float("nan"), "a finite number"), ("x", float("inf"), "a finite number"),
    ("x", -float("inf"), "a finite number"), ("x", "nan", "a finite number"), ("x", ".inf", "a finite number"),
    ("x", "1_000", "a finite number"), ("x", " 3", "a finite number"), ("x", True, "a finite number"),
    ("x", 10**400, "a finite number"), ("x", [1.0], "a finite number"),
    ("n", True, "an integer"), ("n", "3", "an integer"), ("n", 2.5, "an integer"), ("n", float("nan"), "an integer"),
    ("flag", 1, "true or false"), ("flag", "yes", "true or false"),
    ("label", 3, "a string"), ("label", True, "a string"),  # YAML 1.1 reads `label: yes` as True
    ("anything", "inf", "a number"), ("anything", False, "a number"),
])
def test_numbers_are_finite_numbers_and_bools_are_not_numbers(key, value, allowed):
    with pytest.raises(ConfigError) as info:
        Numbers.from_dict({key: value})
    message = str(info.value)
    assert message.startswith(f"{key}: invalid value ") and message.endswith(f"; allowed: {allowed}")
    assert "\n" not in message


def test_accepted_number_forms():
    got = Numbers.from_dict({"x": "1e-4", "n": 3.0, "flag": True, "anything": float("-inf")})
    assert (got.x, got.n, got.flag, got.anything) == (1e-4, 3, True, float("-inf"))
    assert type(got.n) is int and Numbers.from_dict({"x": 2}).x == 2.0
    assert Numbers.from_dict({"anything": float("nan")}).anything != 0  # NaN passes where allowed


def test_messages_stay_one_short_line():
    long_text = "a\nb" * 500
    for data in ({"label": 1, "x": long_text}, {long_text: 1}):
        with pytest.raises(ConfigError) as info:
            Numbers.from_dict(data)
        assert "\n" not in str(info.value) and len(str(info.value)) < 200, str(info.value)
    with pytest.raises(ConfigError) as info:
        Outer.from_dict(list(range(1000)), "sec")
    assert len(str(info.value)) < 200
