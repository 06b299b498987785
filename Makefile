.PHONY: test lint format

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
