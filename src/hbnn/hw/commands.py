"""``hbnn hw``: the hardware cost model on the command line.

Subcommands: ``table2`` (the paper's Table 2, ours beside the paper's), ``estimate`` (any
network on every platform), ``storage`` (bits per weight of one layer with its bit map),
``compare`` (dataflow vs paper scaling on Table 2's nets),
``platforms`` (list or validate platform files) and ``plot`` (accuracy vs estimated
cost from result files). Heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import warnings
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _emit(args: argparse.Namespace, obj: Any, render: Any) -> int:
    """Print ``obj`` as JSON with ``--json``, else ``render(obj)``; exit code 0."""
    print(json.dumps(obj, indent=2, default=float) if args.json else render(obj))
    return 0


def _map_options(args: argparse.Namespace) -> tuple[str | None, str]:
    """``(--structure, --map-code)`` checked (one-line ConfigError, exit 2); structure None when not given."""
    from hbnn.hw.maps import check_map_code, check_structure

    structure = None if args.structure is None else check_structure(args.structure)
    return structure, check_map_code(args.map_code)


def _cmd_table2(args: argparse.Namespace) -> int:
    from hbnn.hw.maps import DEFAULT_STRUCTURE
    from hbnn.hw.table2 import format_table2, reproduce_table2

    structure, code = _map_options(args)
    rows = reproduce_table2(structure=structure or DEFAULT_STRUCTURE, map_code=code)
    return _emit(args, rows, format_table2)


def _cmd_storage(args: argparse.Namespace) -> int:
    from hbnn.hw.maps import parse_shape, storage_table
    from hbnn.hw.report import format_storage

    rows, cols = parse_shape(args.shape)
    mixes = args.wbits or ["1", "2", "1.4"]
    structures = args.structure or ["entry", "channel", "block64"]
    table = {
        "shape": args.shape, "weights": rows * cols, "out_channels": rows, "inputs": cols, "per_channel": args.per_channel,
        "rows": storage_table(rows, cols, mixes, structures, per_channel=args.per_channel),
    }
    return _emit(args, table, format_storage)


def _cmd_compare(args: argparse.Namespace) -> int:
    from hbnn.hw.estimate import compare_table2
    from hbnn.hw.report import format_compare

    return _emit(args, compare_table2(), format_compare)


def _cmd_platforms(args: argparse.Namespace) -> int:
    from hbnn.hw.platforms import load_catalog
    from hbnn.hw.report import format_platforms

    catalog = load_catalog(args.platforms)
    return _emit(args, catalog.to_dict() if args.json else catalog, format_platforms)


def _model_layers(args: argparse.Namespace, catalog: Any) -> tuple[list[Any], str]:
    """Layer profiles for ``--model`` / ``--run`` / ``--packed`` plus a title."""
    from hbnn.errors import ConfigError
    from hbnn.hw.validate import coerce_bits
    from hbnn.hw.workloads import WORKLOAD_LAYERS, workload_layers

    wbits = None if args.wbits is None else coerce_bits(args.wbits, "wbits")
    abits = wbits if args.abits is None else coerce_bits(args.abits, "abits")
    if args.model is None:
        if wbits is not None or abits is not None:
            raise ConfigError("wbits: bits of a trained or packed model come from its layers; drop --wbits/--abits")
        return _loaded_layers(args)
    name = catalog.workloads[args.model].layers if args.model in catalog.workloads else args.model
    if name not in WORKLOAD_LAYERS:
        return _registry_layers(args, catalog, quantize=wbits is not None), args.model
    if wbits is None:
        raise ConfigError(f"wbits: built-in network {args.model!r} needs --wbits (and optionally --abits)")
    from hbnn.hw.maps import mix_levels

    return workload_layers(name, wbits, abits, wmix=mix_levels(_spec_bits(args.wbits))), args.model


def _loaded_layers(args: argparse.Namespace) -> tuple[list[Any], str]:
    """Profile a trained run (``--run``) or packed file (``--packed``)."""
    from hbnn.errors import ConfigError
    from hbnn.hw.profile import profile_model

    kind, path = ("run", Path(args.run)) if args.run else ("packed", Path(args.packed))
    if not path.exists():
        raise ConfigError(f"{kind}: {os.fspath(path)!r} does not exist")
    model, shape = _run_model(path) if kind == "run" else _packed_model(path)
    return profile_model(model, shape), str(path)


def _run_model(path: Path) -> tuple[Any, tuple[int, int, int]]:
    """``(model with the checkpoint's weights, (C, H, W))`` of a run directory (best, else last) or checkpoint."""
    from hbnn.train.rebuild import model_from_checkpoint, recorded_shape

    model, ckpt = model_from_checkpoint(path)
    shape = recorded_shape(ckpt.metadata["model"])
    return model, (shape["in_channels"], shape["image_size"], shape["image_size"])


def _packed_model(path: Path) -> tuple[Any, tuple[int, int, int]]:
    """``(source architecture, (C, H, W))`` of a packed file.

    The weight bits come from the packed bit mixes (Algorithm 1 realizes a mix exactly);
    the activation bits are the mixes' nominal averages (a packed file keeps no running
    estimate of realized activation bits; ``--run`` on the source run reports those).
    """
    from hbnn.export import model_from_packed, packed_input_shape

    model, header = model_from_packed(path)
    return model, packed_input_shape(header)


def _registry_layers(args: argparse.Namespace, catalog: Any, quantize: bool) -> list[Any]:
    """Build ``--model`` with ``hbnn.models``, convert it with ``quantize_`` and profile it."""
    from hbnn.errors import ConfigError
    from hbnn.hw.profile import profile_model
    from hbnn.hw.workloads import WORKLOAD_LAYERS
    from hbnn.models import build_model, is_model_path, list_models

    try:
        model = build_model(args.model, num_classes=args.num_classes, in_channels=args.in_channels,
                            image_size=args.image_size)
    except ConfigError as exc:
        if is_model_path(args.model) or args.model in list_models():  # its own error says what is wrong
            raise ConfigError(f"--model: {exc}") from None
        known = ", ".join(sorted({*WORKLOAD_LAYERS, *catalog.workloads, *list_models()}))
        raise ConfigError(f"--model: {args.model!r} is not a built-in workload or registered model; known: {known}") from None
    if quantize:
        from hbnn.convert import quantize_

        weight, act = _spec_bits(args.wbits), _spec_bits(args.abits if args.abits is not None else args.wbits)
        config = {"default": {"weight": weight, "act": act}, "keep_first": args.keep_first, "keep_last": args.keep_last}
        with warnings.catch_warnings():  # only costs are estimated here: nothing trains the new parameters
            warnings.simplefilter("ignore")
            quantize_(model, config)
    return profile_model(model, (args.in_channels, args.image_size, args.image_size))


def _spec_bits(text: str) -> Any:
    """A CLI bits string as ``QuantSpec`` takes it: ``"2"`` -> 2, ``"1.4"`` -> 1.4, mixes as text."""
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() else value


def _cmd_estimate(args: argparse.Namespace) -> int:
    from hbnn.hw.estimate import estimate_layers
    from hbnn.hw.platforms import load_catalog
    from hbnn.hw.report import format_estimate

    structure, code = _map_options(args)
    catalog = load_catalog(args.platforms)
    layers, title = _model_layers(args, catalog)
    report = estimate_layers(
        layers,
        catalog=catalog,
        platforms=args.platform,
        unfolding=args.unfold,
        lut_budget=args.lut_budget,
        per_layer=args.per_layer,
        structure=structure,
        map_code=code,
    )
    report["network"]["name"] = title
    own = sorted({layer.structure for layer in layers if layer.structure not in (None, structure)})
    if structure is not None and own:
        report["notes"].append(f"--structure {structure} replaces the layers' own bit-map structure ({', '.join(own)})")
    workload = catalog.workloads.get(args.model) if args.model else None
    ratio = report["platforms"][0]["op_ratio"] if report["platforms"] else None
    if workload is not None and ratio is not None and abs(ratio / workload.op_ratio - 1) > 0.01:
        report["notes"].append(
            f"{args.model}: costed by its counted MACs ({ratio:.3g}x the baseline net); "
            f"the paper's Table 2 uses an op ratio of {workload.op_ratio:g} (hbnn hw table2)"
        )
    return _emit(args, report, lambda r: format_estimate(r, title))


def _cmd_plot(args: argparse.Namespace) -> int:
    from hbnn.hw.plot import cost_points, plot_accuracy_vs_cost, read_results
    from hbnn.hw.platforms import load_catalog

    catalog = load_catalog(args.platforms)
    points = cost_points(read_results(args.results), catalog=catalog, workload=args.model, fpga=args.fpga, asic=args.asic)
    plot_accuracy_vs_cost(points, args.out)
    print(f"wrote {args.out} ({len(points)} points; costs are estimates from the paper's scaling)")
    return 0


def _add_estimate(hw: Any) -> None:
    p = hw.add_parser("estimate", help="estimate a network on every platform (area, kFPS, W, energy, op counts)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="built-in network (vgg8, mobilenet, finn_cnv, mobilenet_v1_224), hbnn.models name or package.module:callable")
    src.add_argument("--run", help="trained run directory or checkpoint (its best, else last, weights)")
    src.add_argument("--packed", help="packed model file (hbnn export): its source architecture and bit mixes")
    p.add_argument("--wbits", help="weight bits in [1, 8]: a number or a mix such as 70/20/10 (with --model)")
    p.add_argument("--abits", help="activation bits (default: --wbits)")
    p.add_argument("--keep-first", action=argparse.BooleanOptionalAction, default=True, help="first layer stays float")
    p.add_argument("--keep-last", action=argparse.BooleanOptionalAction, default=True, help="last layer stays float")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--platform", action="append", help="platform name (repeatable; default: all)")
    p.add_argument("--platforms", help="YAML file of extra platforms")
    p.add_argument("--unfold", type=float, help="FPGA unfolding k of the paper's rule (capped at the device)")
    p.add_argument("--lut-budget", type=float, help="dataflow LUT budget, fraction of the device (default: scaling occupancy)")
    p.add_argument("--per-layer", action="store_true", help="also show per-layer shapes, bits, op counts and storage")
    _add_map_options(p, "default: each layer's own from its quant config, else entry (the paper's per-entry maps)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_estimate)


def _add_map_options(p: Any, structure_default: str) -> None:
    """``--structure`` and ``--map-code`` (checked by the handler, so bad values exit 2 in one line)."""
    from hbnn.hw.maps import DEFAULT_MAP_CODE, MAP_CODES, STRUCTURES

    p.add_argument("--structure", metavar="NAME",
                   help=f"bit-map structure of binarized weights for the map-aware memory: {STRUCTURES}; {structure_default}")
    p.add_argument("--map-code", default=DEFAULT_MAP_CODE, metavar="CODE",
                   help=f"code of one map unit: {', '.join(MAP_CODES)} (default: {DEFAULT_MAP_CODE}, ceil(log2 K) bits; "
                   "entropy: the lower bound; packed: hbnn export's nested masks)")


def register(subparsers: Any) -> None:
    """Add ``hw`` with ``table2``, ``estimate``, ``storage``, ``compare``, ``platforms`` and ``plot``."""
    hw = subparsers.add_parser("hw", help="FPGA/ASIC cost model (paper Table 2 and estimates)")
    sub = hw.add_subparsers(dest="hw_command", metavar="SUBCOMMAND", parser_class=type(hw))
    sub.required = True
    p = sub.add_parser("table2", help="the paper's Table 2 recomputed, ours beside the paper's")
    _add_map_options(p, "default: entry (the paper's per-entry maps)")
    p.add_argument("--json", action="store_true", help="print a list of row objects")
    p.set_defaults(func=_cmd_table2)
    _add_estimate(sub)
    p = sub.add_parser("storage", help="bits per weight of one layer: paper vs map-aware (every map code), masked planes")
    p.add_argument("--shape", default="256x256x3x3", help="weight shape OxIxKHxKW or OxI (default: 256x256x3x3)")
    p.add_argument("--wbits", action="append", help="weight bits or mix, repeatable (default: 1, 2, 1.4)")
    p.add_argument("--structure", action="append", metavar="NAME",
                   help="bit-map structure for heterogeneous mixes, repeatable (default: entry, channel, block64)")
    p.add_argument("--per-channel", action="store_true", help="one scale per output channel and plane")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_storage)
    p = sub.add_parser("compare", help="dataflow model vs the paper's scaling on Table 2's FPGA rows")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_compare)
    p = sub.add_parser("platforms", help="list (and validate) the known platforms")
    p.add_argument("--platforms", help="YAML file of extra platforms to validate and include")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_platforms)
    p = sub.add_parser("plot", help="accuracy vs estimated area/energy from result JSONL files")
    p.add_argument("--results", required=True, help="JSONL file: one object per line with config bits and top1")
    p.add_argument("--out", required=True, help="image file to write (PNG)")
    p.add_argument("--model", default="vgg8", help="workload to cost (default: vgg8)")
    p.add_argument("--fpga", default="zc706")
    p.add_argument("--asic", default="alemdar2017")
    p.add_argument("--platforms", help="YAML file of extra platforms")
    p.set_defaults(func=_cmd_plot)
