"""Plain-text renderings of the hardware estimates (the CLI's default output)."""

from __future__ import annotations

from typing import Any

from hbnn.hw.platforms import Catalog

__all__ = ["format_estimate", "format_compare", "format_platforms", "format_storage", "si"]


def si(value: float, unit: str = "") -> str:
    """``1.5e6`` -> ``"1.5 M"``: three significant digits with an SI prefix."""
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def _size(entry: dict[str, Any]) -> str:
    if entry.get("area_mm2") is not None:
        return f"{entry['area_mm2']:.4g} mm2"
    return f"{entry['occupancy']:.1%}"


def _row(platform: str, model: str, entry: dict[str, Any]) -> str:
    extra = f"  bottleneck {entry['bottleneck']}" if "bottleneck" in entry else ""
    return (
        f"{platform:<12} {model:<14} {_size(entry):>12} {entry['kfps']:>10.4g} {entry['watts']:>8.3g} "
        f"{si(entry['energy_per_image_j'], 'J'):>10}{extra}"
    )


def _layer_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        f"{'layer':<16} {'kind':<6} {'rows':>5} {'cols':>5} {'pixels':>6} {'MACs':>9} {'wbits':>5} {'abits':>5} "
        f"{'passes':>6} {'speedup':>7}  {'map':<9} {'bits/w map-aware':>16}"
    ]
    for layer, ops in zip(report["layers"], report["ops"]["layers"]):
        passes = "float" if ops["passes_per_mac"] is None else f"{ops['passes_per_mac']:.3g}"
        st = layer.get("storage")
        store = "-" if st is None else f"{st['structure']:<9} {st['bits_per_weight']['map_aware']:>16.4g}"
        lines.append(
            f"{layer['name']:<16} {layer['kind']:<6} {layer['rows']:>5} {layer['cols']:>5} {layer['pixels']:>6} "
            f"{si(layer['macs']):>9} {layer['wbits']:>5.3g} {layer['abits']:>5.3g} {passes:>6} {ops['speedup']:>6.3g}x  {store}"
        )
    return lines


def _storage_line(net: dict[str, Any]) -> str:
    """Bits per binarized weight, the paper's beside the map-aware (see hbnn.hw.maps)."""
    st = net["weight_storage"]
    if st is None:
        return "weight memory, map-aware: no binarized weights (no bit map)"
    bpw = st["bits_per_weight"]
    return (
        f"bits per binarized weight: paper {bpw['paper']:.4g}; map-aware {bpw['map_aware']:.4g} = "
        f"{bpw['paper']:.4g} planes + {bpw['map']:.4g} map ({st['structure']} structure, {st['map_code']} code) + "
        f"{bpw['scales']:.2g} scales; weight memory map-aware {si(net['weight_memory_map_aware_bits'], 'bit')} "
        f"(paper {si(net['weight_memory_bits'], 'bit')}); as masked planes (CPU kernels) {bpw['masked_planes']:.4g}"
    )


def format_estimate(report: dict[str, Any], title: str = "") -> str:
    """The network summary, the §4.5 op view and one line per platform and cost model."""
    net, ops = report["network"], report["ops"]
    lines = [report["label"]]
    lines.append(
        f"network {title}: {net['layers']} layers, {si(net['macs'])} MACs/image, {si(net['weights'])} weights, "
        f"weight memory {si(net['weight_memory_bits'], 'bit')}, bits {net['bits']:.3g} "
        f"(float layers: {net['float_mac_share']:.1%} of MACs)"
    )
    lines.append(_storage_line(net))
    lines.append(
        f"op count (paper §4.5): {si(ops['macs'])} MACs -> {si(ops['binary_passes'])} xnor-popcount passes "
        f"= {si(ops['word_ops'])} 64-bit word ops (float layers: {si(ops['float_macs'])} MACs); "
        f"speedup vs float {ops['speedup']:.3g}x"
    )
    if "layers" in report:
        lines += _layer_lines(report)
    lines.append(f"{'platform':<12} {'cost model':<14} {'occup./area':>12} {'kFPS':>10} {'W':>8} {'J/image':>10}")
    notes = list(report.get("notes", []))
    for p in report["platforms"]:
        lines.append(_row(p["platform"], "paper scaling", p["paper_scaling"]))
        notes += [f"{p['platform']}: {n}" for n in p["paper_scaling"]["notes"]]
        if "dataflow" in p:
            lines.append(_row(p["platform"], "dataflow", p["dataflow"]))
            notes += [f"{p['platform']} (dataflow): {n}" for n in p["dataflow"]["notes"]]
    return "\n".join(lines + [f"note: {n}" for n in notes])


def format_compare(rows: list[dict[str, Any]]) -> str:
    """Dataflow vs paper scaling on Table 2's FPGA rows (both estimates)."""
    lines = [
        "Dataflow model vs the paper's scaling on Table 2's FPGA rows (ESTIMATES; dataflow gets the same LUTs)",
        f"{'#':>2} {'model':<9} {'bits':>4} {'unf':>3} {'MAC ratio':>9} {'paper ratio':>11} "
        f"{'occupancy':>9} {'kFPS scaling':>12} {'kFPS dataflow':>13} {'ratio':>5} {'bottleneck':<10} {'occ. for same kFPS':>18}",
    ]
    for r in rows:
        need = "unreachable" if r["occupancy_for_scaling_kfps"] is None else f"{r['occupancy_for_scaling_kfps']:.1%}"
        lines.append(
            f"{r['row']:>2} {r['model']:<9} {r['bits']:>4g} {r['unfolding']:>2g}x {r['macs_ratio']:>9.3g} "
            f"{r['paper_op_ratio']:>11g} {r['scaling']['occupancy']:>9.1%} {r['scaling']['kfps']:>12.4g} "
            f"{r['dataflow']['kfps']:>13.4g} {r['kfps_ratio']:>5.2f} {r['dataflow']['bottleneck']:<10} {need:>18}"
        )
    return "\n".join(lines)


def format_platforms(catalog: Catalog) -> str:
    """One block per platform and workload, with their sources."""
    lines = []
    for p in sorted(catalog.platforms.values(), key=lambda p: p.name):
        b = p.baseline
        size = f"occupancy {b.occupancy:.1%}" if p.kind == "fpga" else f"area {b.area_mm2:g} mm2"
        lines.append(f"{p.name} ({p.kind}): {p.description}")
        lines.append(f"  baseline: {b.bits:g}-bit net of {si(b.macs)} MACs, {size}, {b.kfps:g} kFPS, {b.watts:g} W")
        if p.dataflow is not None:
            c = p.dataflow
            lines.append(
                f"  dataflow: {p.device_luts} LUTs at {p.clock_mhz:g} MHz; LUTs/lane/bit^2 {c.lut_per_lane:g}, "
                f"per PE {c.lut_per_pe:g}, per layer {c.lut_per_layer:g}, float layers as {c.float_bits:g}-bit"
            )
        if p.source:
            lines.append(f"  source: {p.source}")
    for w in sorted(catalog.workloads.values(), key=lambda w: w.name):
        occ = "" if w.fpga_occupancy is None else f", FPGA occupancy {w.fpga_occupancy:.1%}"
        lines.append(f"workload {w.name} ({w.label}): layers {w.layers}, op ratio {w.op_ratio:g}{occ}")
    return "\n".join(lines)


def _mix_label(mix: list[list[float]]) -> str:
    """``[[1, 0.7], [2, 0.2], [3, 0.1]]`` -> ``"70/20/10 of 1/2/3"``."""
    return "/".join(f"{p * 100:.4g}" for _, p in mix) + " of " + "/".join(f"{b:g}" for b, _ in mix)


def format_storage(table: dict[str, Any]) -> str:
    """Bits per weight of one layer: the paper's, map-aware under each code, masked planes."""
    rows = table["rows"]
    codes = list(rows[0]["bits_per_weight"]["map_aware"]) if rows else []
    lines = [
        f"weight {table['shape']} ({table['weights']} weights, {table['out_channels']} output rows of "
        f"{table['inputs']}), scales {'per channel' if table['per_channel'] else 'per tensor'}: bits per weight",
        f"{'weights':<24} {'structure':<9} {'units':>8} {'paper':>6} "
        + " ".join(f"{'+map ' + c:>12}" for c in codes)
        + f" {'masked planes':>13}",
    ]
    for r in rows:
        bpw = r["bits_per_weight"]
        label = f"W{r['wbits']:g}" + ("" if len(r["mix"]) == 1 else " (" + _mix_label(r["mix"]) + ")")
        lines.append(
            f"{label:<24} {r['structure']:<9} {r['map_units']:>8} {bpw['paper']:>6.4g} "
            + " ".join(f"{bpw['map_aware'][c]:>12.4f}" for c in codes)
            + f" {bpw['masked_planes']:>13.4f}"
        )
    lines.append(
        "paper = planes only; +map CODE = planes + bit map + scales (hbnn.hw.maps); "
        "masked planes = dense sign planes + masks of the non-full planes + scales, as the CPU kernels hold them"
    )
    return "\n".join(lines)
