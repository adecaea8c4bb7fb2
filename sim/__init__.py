"""Research tooling around the orchestrator's decision core (not part of any service).

- `simulator`: slot-by-slot trace simulation of every placement policy (the registered
  algorithms, `exact-hindsight` and the per-request baselines) on a fake clock.
- `scenarios`: random instances built from the measured H200 characterisation (read from
  disk), for the benchmarks and tests.

Nothing under `orchestrator/`, `cloud_gateway/` or `edge_agent/` imports this package.
"""
