# The two commands of the README. Both set everything up from a fresh clone.
.PHONY: setup test lint

setup:
	scripts/setup.sh dev

# Set up and run the whole test suite (what CI runs).
test:
	scripts/setup.sh test,cli
	.venv/bin/python -m ruff check src tests benchmarks
	.venv/bin/python -m pytest -q

lint:
	.venv/bin/python -m ruff check src tests benchmarks
	.venv/bin/python -m ruff format --check src tests benchmarks
