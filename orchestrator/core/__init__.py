"""The orchestrator's pure decision core: no FastAPI, torch or NVML imports.

- `placement`: the data types of the decision model (hosts, models, measured performance,
  prices, options), its cost model (`evaluate`), its constraints (`violations`) and the
  per-option explanation (`explain`), exactly as `../shared/DESIGN.md` ("The decision model")
  writes them.
- `algorithms`: the placement algorithms behind one interface, registered by name
  (`ALGORITHMS`, `solve`): `exact` (MILP), `mlds` (the default), `ga` and the baselines.
- `compiled`: the instance as numpy arrays plus the incremental host state the fast
  algorithms share (an implementation detail of `algorithms`).

The simulator and the random scenarios built from measured models live in `sim/`
(research tooling, not part of the service).
"""
