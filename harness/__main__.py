"""`python -m medssl_bench.harness` (and `torchrun -m medssl_bench.harness`): the `bench` command,
process settings (harness.process) included."""
from medssl_bench.harness.app.cli import run

if __name__ == "__main__":
    run()
