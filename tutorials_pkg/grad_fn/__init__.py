"""Chapter: tracing a model's structure through ``grad_fn``, and pruning by it.

``trace``: the autograd node behind each layer's output (``trace_grad_fn``,
``grad_fn_modules``) and the graph they form (``module_graph``).
``pruning``: the channels that must be pruned together, read from the same
trace (``coupled_channel_groups``), and cutting them (``prune_channel_groups``).
``yolo``: a small YOLO-style detector, the network the pruning page prunes.
"""

from tutorials_pkg.grad_fn.pruning import (
    ChannelGroup,
    Channels,
    batchnorm_scale,
    coupled_channel_groups,
    coupled_channel_groups_where_cat_starts_new,
    cut_conv,
    cut_layer,
    follow_channels,
    prune_channel_group,
    prune_channel_groups,
    walk_channels,
    zero_channel_groups,
)
from tutorials_pkg.grad_fn.trace import (
    GRAD_FN_TYPES,
    MermaidDiagram,
    ModuleGraph,
    SavedTensors,
    Trace,
    check_autograd_is_on,
    grad_fn_modules,
    grad_fn_modules_keeping_only_the_last_hook,
    grad_fn_modules_without_checks,
    layer_edges,
    module_graph,
    nodes_in_order,
    output_nodes,
    record_grad_fn,
    trace_grad_fn,
)
from tutorials_pkg.grad_fn.yolo import TinyYOLO, tiny_yolo

__all__ = [
    "GRAD_FN_TYPES", "ChannelGroup", "Channels", "MermaidDiagram", "ModuleGraph", "SavedTensors",
    "TinyYOLO", "Trace", "batchnorm_scale", "check_autograd_is_on", "coupled_channel_groups",
    "coupled_channel_groups_where_cat_starts_new", "cut_conv", "cut_layer", "follow_channels",
    "grad_fn_modules", "grad_fn_modules_keeping_only_the_last_hook",
    "grad_fn_modules_without_checks", "layer_edges", "module_graph", "nodes_in_order",
    "output_nodes", "prune_channel_group", "prune_channel_groups", "record_grad_fn",
    "tiny_yolo", "trace_grad_fn", "walk_channels", "zero_channel_groups",
]
