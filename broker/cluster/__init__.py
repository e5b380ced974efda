"""Threads sharded over replicas: who owns a thread (:mod:`.ownership`, pure) and
the link that carries an event to its owner and the replies back (:mod:`.forward`)."""
