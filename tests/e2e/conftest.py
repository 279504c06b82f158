from harness import replay_factory, wait_for  # noqa: F401  (fixtures)
