"""FPGA/ASIC cost model: the paper's Table 2 scaling rules and a FINN-style dataflow model.

Importing ``hbnn.hw`` loads no plotting library and builds no model; YAML data is read
on first use. Every number these functions return is an *estimate* of a hypothetical
accelerator, scaled from published baselines (see ``docs/hardware.md``). Weight memory is
reported as the paper counts it and, beside it, with the bit map (:mod:`hbnn.hw.maps`).

Example:
    >>> from hbnn.hw import load_catalog, scale
    >>> zc706 = load_catalog().platform("zc706")
    >>> round(scale(zc706, 1.4).kfps, 2)        # Table 2, row 5
    15.64
"""

from hbnn.hw.dataflow import DataflowEstimate, calibrate_lut_per_lane, dataflow_estimate
from hbnn.hw.estimate import ESTIMATE_LABEL, compare_table2, estimate_layers, estimate_module
from hbnn.hw.maps import WeightStorage, network_storage, weight_storage
from hbnn.hw.platforms import Catalog, Platform, load_catalog
from hbnn.hw.profile import LayerProfile, op_view, profile_model
from hbnn.hw.scaling import ScalingEstimate, asic_scaling, fpga_scaling, scale
from hbnn.hw.table2 import reproduce_table2
from hbnn.hw.workloads import workload_layers

__all__ = [
    "Catalog",
    "DataflowEstimate",
    "ESTIMATE_LABEL",
    "LayerProfile",
    "Platform",
    "ScalingEstimate",
    "WeightStorage",
    "asic_scaling",
    "calibrate_lut_per_lane",
    "compare_table2",
    "dataflow_estimate",
    "estimate_layers",
    "estimate_module",
    "fpga_scaling",
    "load_catalog",
    "network_storage",
    "op_view",
    "profile_model",
    "reproduce_table2",
    "scale",
    "weight_storage",
    "workload_layers",
]
