"""fedcore performance benchmarks, each a runnable module with a `--quick` mode for smoke tests.

- `python -m benchmarks.aggregation`: FedAvg aggregation throughput (streaming and batch
  kernels) as a ratio of a plain memory copy of the same bytes, on the CPU and, when present,
  on CUDA.
- `python -m benchmarks.simulation_overhead`: time to the first round and seconds per round of
  a 1,000-client simulation, split into local training and runtime overhead, against the same
  local steps run in a plain loop.
- `python -m benchmarks.memory`: peak RSS of a 10,000-client simulation against a 100-client
  one, each in a fresh process.
- `python -m benchmarks.run_all`: all three in sequence (separate processes) and a summary.

Every module prints a table and writes `benchmarks/results/<name>.json` (or `--out DIR`).
Machines are noisy, so speeds are reported as ratios to a baseline measured in the same
process, each the best of several repeats.
"""
