"""What the tests and the benchmarks share: throwaway RabbitMQ nodes
(broker, cluster), `wqd run` as a subprocess (daemon), the pytest fixtures
(fixtures), the one wait loop (waiting), the one /proc reader (procfs) and
the chaos run (chaos). Import it as ``tests.support`` from the repository root
(pytest does; ``python -m bench.run`` does too)."""
