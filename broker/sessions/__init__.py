"""The session pool and one session: an agent process, its ACP session and its turn queue.

Imports :mod:`broker.acp`, the shared vocabulary at :mod:`broker`'s root and
:mod:`supervisor`; never the chat layer, the front-ends or ops.
"""
