# The two commands of the README. Both set everything up from a fresh clone.
.PHONY: setup test run lint

setup:
	scripts/setup.sh dev

# Set up and run the whole test suite (what CI runs).
test:
	scripts/setup.sh test,cli
	.venv/bin/python -m ruff check src tests benchmarks
	.venv/bin/python -m pytest -q

# Set up, install the embedded default dataset (Fashion-MNIST) and run the main job:
# train resnet20 with LaCoOT, collapse, and report into runs/main.
run:
	scripts/setup.sh cli
	scripts/get-data.sh
	.venv/bin/lacoot run --out runs/main --overwrite

lint:
	.venv/bin/python -m ruff check src tests benchmarks
	.venv/bin/python -m ruff format --check src tests benchmarks
