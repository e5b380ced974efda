"""agent-broker: talk to ACP coding agents from chat, one supervised agent per thread."""

__version__ = "0.1.0"
