"""The native Discord front-end (``[discord]``): gateway, REST and the adapter.

Modules that do I/O: :mod:`.gateway` (the WebSocket connection), :mod:`.rest`
(HTTP requests), :mod:`.adapter` (the front-end the service starts). Pure
decisions: :mod:`.protocol` (opcodes, intents, close codes, heartbeat and
identify pacing), :mod:`.ratelimit` (REST buckets), :mod:`.messages`
(Discord payloads <-> the broker's events and replies).
"""
