"""Slack, natively: Socket Mode (``socket``) and the Web API (``web``) on trio,
Slack's events read into inbound events (``events``), replies written as
Slack messages (``blocks``, ``pacing``), all run by ``adapter``."""
