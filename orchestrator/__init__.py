"""The orchestrator: registry of hosts, models and measured profiles; request rates; the
placement decision (`core/`), carried out on the agents by idempotent level commands; the
placement, what-if, explain and routing views over REST (`api/`)."""
