from medssl_bench.harness.app.cli import run

run()
