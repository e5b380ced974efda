"""Pool tests run real fake-agent processes; every wait is bounded."""

from broker.testing.fixtures import ask

__all__ = ["ask"]
