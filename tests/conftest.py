pytest_plugins = ["broker.testing.fixtures"]
