.PHONY: test lint format bench

# The README's test command: venv, MariaDB, ruff, then the whole suite on SQLite and MariaDB.
# Extra pytest arguments: make test ARGS="-k verify"
test:
	bash scripts/test.sh $(ARGS)

lint:
	.venv/bin/ruff check downstream_node tests scripts
	.venv/bin/ruff format --check downstream_node tests

format:
	.venv/bin/ruff format downstream_node tests
	.venv/bin/ruff check --fix downstream_node tests scripts

# Benchmarks, each figure beside a limit measured in the same run (docs/benchmarks.md): one JSON
# document on stdout. MariaDB from $$DOWNSTREAM_BENCH_MYSQL_URL (default root@127.0.0.1/bench).
# Extra arguments: make bench ARGS="--quick --db sqlite --output bench.json"
bench:
	@.venv/bin/python scripts/bench.py $(ARGS)
