"""The benchmark suite: one module per benchmark, run by `python -m bench`."""

# Every benchmark (a module of this package), in run order: cheap in-process ones
# first, then those that need the node.
BENCHMARKS = (
    "qc_verify",
    "journal_throughput",
    "appliance_decision",
    "tx_size",
    "node_latency",
    "memory",
)
