"""Run child processes under a trio nursery with hard guarantees (ACP-agnostic)."""
