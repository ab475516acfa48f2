"""Hardware platforms and workloads as data: the packaged ``data/platforms.yaml`` plus user files.

A *platform* is a measured baseline design that the cost models scale from:

* ``kind: fpga`` — ``baseline: {bits, occupancy, kfps, watts}`` (LUT occupancy as a
  fraction) and, for the dataflow model, ``device_luts``, ``clock_mhz`` and
  ``dataflow: {lut_per_lane, lut_per_pe, lut_per_layer, float_bits}``;
* ``kind: asic`` — ``baseline: {bits, area_mm2, kfps, watts}``.

Every baseline names the network it ran, as a built-in layer table (``layers:
finn_cnv``) or a MAC count (``macs: 59461376``), so other networks scale by their
MAC ratio. A *workload* names a Table 2 network: its layer table, the paper's op ratio
to the baseline network and, optionally, the FPGA occupancy the paper assumed for it.

User files (``--platforms FILE``) have the same schema and add to, or replace by name,
the packaged entries. Every mistake raises :class:`~hbnn.errors.ConfigError` naming the
file and the key path, e.g. ``platforms.mine.baseline.kfps: expected a number > 0``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, Mapping

from hbnn.errors import ConfigError
from hbnn.hw.validate import check_bits, check_fraction, check_positive
from hbnn.hw.workloads import WORKLOAD_LAYERS, workload_layers

__all__ = [
    "Baseline",
    "DataflowConstants",
    "Platform",
    "Workload",
    "Catalog",
    "load_catalog",
    "parse_catalog",
    "SCHEMA_VERSION",
]

SCHEMA_VERSION = 1
_KINDS = ("fpga", "asic")


@dataclass(frozen=True)
class Baseline:
    """A measured design: ``bits``-bit network of ``macs`` MACs per image at ``kfps`` and ``watts``.

    ``occupancy`` (fraction of LUTs) is set for FPGAs, ``area_mm2`` for ASICs.
    """

    bits: float
    kfps: float
    watts: float
    macs: int
    occupancy: float | None = None
    area_mm2: float | None = None
    top1: float | None = None


@dataclass(frozen=True)
class DataflowConstants:
    """LUT cost constants of the dataflow model (see ``docs/hardware.md`` for their sources).

    A layer folded to ``PE x SIMD`` lanes costs
    ``PE*SIMD*lut_per_lane*wbits*abits + PE*lut_per_pe + lut_per_layer`` LUTs; float
    layers are costed as ``float_bits``-bit fixed point.
    """

    lut_per_lane: float
    lut_per_pe: float
    lut_per_layer: float
    float_bits: float = 8.0


@dataclass(frozen=True)
class Platform:
    """A named FPGA or ASIC baseline (``kind`` is ``"fpga"`` or ``"asic"``)."""

    name: str
    kind: str
    baseline: Baseline
    description: str = ""
    source: str = ""
    device_luts: int | None = None
    clock_mhz: float | None = None
    dataflow: DataflowConstants | None = None


@dataclass(frozen=True)
class Workload:
    """A Table 2 network: ``layers`` table, ``op_ratio`` to the baseline net, optional FPGA occupancy."""

    name: str
    label: str
    layers: str
    op_ratio: float = 1.0
    fpga_occupancy: float | None = None
    description: str = ""


@dataclass(frozen=True)
class Catalog:
    """Known platforms and workloads, looked up by name with helpful errors."""

    platforms: Mapping[str, Platform] = field(default_factory=dict)
    workloads: Mapping[str, Workload] = field(default_factory=dict)

    def platform(self, name: str) -> Platform:
        """The platform ``name``; ConfigError listing the known ones otherwise."""
        if name not in self.platforms:
            raise ConfigError(f"platform: unknown platform {name!r}; known: {', '.join(sorted(self.platforms))}")
        return self.platforms[name]

    def to_dict(self) -> dict[str, Any]:
        """This catalog in the YAML schema (baselines by ``macs``); ``parse_catalog`` reads it back."""
        return {
            "version": SCHEMA_VERSION,
            "platforms": {n: _platform_dict(p) for n, p in self.platforms.items()},
            "workloads": {n: _drop_none(asdict(w), "name") for n, w in self.workloads.items()},
        }

    def workload(self, name: str) -> Workload:
        """The workload ``name``; ConfigError listing the known ones otherwise."""
        if name not in self.workloads:
            raise ConfigError(f"model: unknown workload {name!r}; known: {', '.join(sorted(self.workloads))}")
        return self.workloads[name]


def _drop_none(d: dict[str, Any], *skip: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None and k not in skip}


def _platform_dict(p: Platform) -> dict[str, Any]:
    out = _drop_none(asdict(p), "name", "baseline", "dataflow")
    out["baseline"] = _drop_none(asdict(p.baseline))
    if p.dataflow is not None:
        out["dataflow"] = asdict(p.dataflow)
    return out


# ----------------------------------------------------------------------------- parsing
class _Node:
    """A mapping being parsed, remembering its key path and file for error messages."""

    def __init__(self, data: Any, path: str, where: str):
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}{where}")
        self.data, self.path, self.where = data, path, where

    def check_keys(self, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
        allowed = required + optional
        for key in self.data:
            if key not in allowed:
                raise ConfigError(f"{self.path}.{key}: unknown key; allowed: {', '.join(allowed)}{self.where}")
        for key in required:
            if key not in self.data:
                raise ConfigError(f"{self.path}.{key}: missing required key{self.where}")

    def get(self, key: str, check: Any = None, default: Any = None) -> Any:
        if key not in self.data:
            return default
        try:
            return check(self.data[key], f"{self.path}.{key}") if check else self.data[key]
        except ConfigError as exc:
            raise ConfigError(f"{exc}{self.where}") from None

    def child(self, key: str) -> "_Node":
        return _Node(self.data[key], f"{self.path}.{key}", self.where)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value


def _layers_name(value: Any, name: str) -> str:
    if value not in WORKLOAD_LAYERS:
        raise ConfigError(f"{name}: unknown layer table {value!r}; known: {', '.join(sorted(WORKLOAD_LAYERS))}")
    return value


def _count(value: Any, name: str) -> int:
    x = check_positive(value, name)
    if x != int(x):
        raise ConfigError(f"{name}: expected a whole number > 0, got {value!r}")
    return int(x)


def _parse_baseline(node: _Node, kind: str) -> Baseline:
    size = "occupancy" if kind == "fpga" else "area_mm2"
    node.check_keys(("bits", "kfps", "watts", size), ("layers", "macs", "top1"))
    if ("layers" in node.data) == ("macs" in node.data):
        raise ConfigError(f"{node.path}: give exactly one of 'layers' (a layer table) or 'macs'{node.where}")
    layers = node.get("layers", _layers_name)
    macs = node.get("macs", _count) or sum(layer.macs for layer in workload_layers(layers))
    return Baseline(
        bits=node.get("bits", check_bits),
        kfps=node.get("kfps", check_positive),
        watts=node.get("watts", check_positive),
        macs=macs,
        occupancy=node.get("occupancy", check_fraction),
        area_mm2=node.get("area_mm2", check_positive),
        top1=node.get("top1", check_positive),
    )


def _non_negative(value: Any, name: str) -> float:
    """Overheads may be 0; otherwise as :func:`check_positive`."""
    return 0.0 if value == 0 and not isinstance(value, bool) else check_positive(value, name)


def _parse_dataflow(node: _Node) -> DataflowConstants:
    node.check_keys(("lut_per_lane", "lut_per_pe", "lut_per_layer"), ("float_bits",))
    return DataflowConstants(
        lut_per_lane=node.get("lut_per_lane", check_positive),
        lut_per_pe=node.get("lut_per_pe", _non_negative),
        lut_per_layer=node.get("lut_per_layer", _non_negative),
        float_bits=node.get("float_bits", check_bits, 8.0),
    )


def _parse_platform(name: str, node: _Node) -> Platform:
    kind = node.data.get("kind")
    if kind not in _KINDS:
        raise ConfigError(f"{node.path}.kind: expected one of {', '.join(_KINDS)}, got {kind!r}{node.where}")
    extra = ("device_luts", "clock_mhz", "dataflow") if kind == "fpga" else ()
    node.check_keys(("kind", "baseline"), ("description", "source") + extra)
    dataflow = _parse_dataflow(node.child("dataflow")) if "dataflow" in node.data else None
    platform = Platform(
        name=name,
        kind=kind,
        baseline=_parse_baseline(node.child("baseline"), kind),
        description=node.get("description", _text, ""),
        source=node.get("source", _text, ""),
        device_luts=node.get("device_luts", _count),
        clock_mhz=node.get("clock_mhz", check_positive),
        dataflow=dataflow,
    )
    if dataflow is not None and (platform.device_luts is None or platform.clock_mhz is None):
        raise ConfigError(f"{node.path}: 'dataflow' needs 'device_luts' and 'clock_mhz'{node.where}")
    return platform


def _parse_workload(name: str, node: _Node) -> Workload:
    node.check_keys(("layers",), ("label", "op_ratio", "fpga_occupancy", "description"))
    return Workload(
        name=name,
        label=node.get("label", _text, name),
        layers=node.get("layers", _layers_name),
        op_ratio=node.get("op_ratio", check_positive, 1.0),
        fpga_occupancy=node.get("fpga_occupancy", check_fraction),
        description=node.get("description", _text, ""),
    )


def parse_catalog(data: Any, where: str = "") -> Catalog:
    """Validate a loaded YAML document (``where`` = `` (in FILE)`` for messages)."""
    root = _Node(data if data is not None else {}, "platforms file", where)
    root.check_keys(("version",), ("platforms", "workloads"))
    if root.data["version"] != SCHEMA_VERSION:
        raise ConfigError(f"version: expected {SCHEMA_VERSION}, got {root.data['version']!r}{where}")
    sections = {}
    for key, parse in (("platforms", _parse_platform), ("workloads", _parse_workload)):
        section = _Node(root.data.get(key) or {}, key, where)
        sections[key] = {str(n): parse(str(n), section.child(n)) for n in section.data}
    return Catalog(sections["platforms"], sections["workloads"])


def _read_yaml(text: str, where: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"platforms file: invalid YAML ({first}){where}") from None


def load_catalog(path: str | os.PathLike | None = None) -> Catalog:
    """The packaged platforms and workloads, plus those of the user file ``path``.

    User entries with a packaged name replace the packaged entry.

    Raises:
        ConfigError: unreadable file, invalid YAML or any invalid entry (one line).
    """
    packaged = resources.files("hbnn.hw").joinpath("data/platforms.yaml").read_text(encoding="utf-8")
    catalog = parse_catalog(_read_yaml(packaged, " (in packaged platforms.yaml)"), " (in packaged platforms.yaml)")
    if path is None:
        return catalog
    where = f" (in {os.fspath(path)})"
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"platforms file: cannot read {os.fspath(path)!r}: {exc.strerror}") from None
    user = parse_catalog(_read_yaml(text, where), where)
    return Catalog({**catalog.platforms, **user.platforms}, {**catalog.workloads, **user.workloads})
