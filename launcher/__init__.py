"""The top floor: the `genedge` command line (`cli`) and the local supervisor that runs the
whole system as processes on one machine (`system`, `up`). It imports every service; nothing
imports it."""
