"""Running the broker: the command line, the service's top-level nursery, status,
the dashboard and the terminal chat client. The top layer: nothing imports it."""
