"""The orchestrator's pure decision core: no FastAPI, torch or NVML imports.

- `placement`: the data types of the decision model (hosts, models, measured performance,
  prices, options), its cost model (`evaluate`), its constraints (`violations`) and the
  per-option explanation (`explain`), exactly as `../shared/DESIGN.md` ("The decision model")
  writes them.
- `algorithms`: the placement algorithms behind one interface, registered by name
  (`ALGORITHMS`, `solve`): `exact` (MILP), `mlds` (the default), `ga` and the baselines.
- `compiled`: the instance as numpy arrays plus the incremental host state the fast
  algorithms share (an implementation detail of `algorithms`).
- `splitting`: the best traffic fractions for given levels (a linear programme) and the
  replica candidates of hot models that `mlds` tries.
- `queueing`: a host's expected wait as a convex function of its utilisation (M/G/1, and
  the curve of a host that sheds to the cloud), linearised for the MILP.
- `rates`: request-rate estimation per model and the pool-miss probability per host.
- `hysteresis`: when a new decision replaces the levels held (the break-even rule).
- `reconcile`: a decision's difference from the actual levels, as ordered `PUT level`
  commands; `describe`: the per-model cost and one-line why; `recent`: ids of arrivals
  batches already counted.
- `batching`: a model's per-request latency and host service time at the batch size its
  load implies, from its profile's throughput points (a batching host carries more load).

The simulator and the random scenarios built from measured models live in `sim/`
(research tooling, not part of the service).
"""
