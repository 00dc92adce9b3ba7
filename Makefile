# Two commands for a newcomer: `make demo` (the main job) and `make test`.
# Both set up everything they need (uv, the Python environment, Debian
# packages for the sandbox) and are safe to run again. Setup compiles the
# environment's bytecode and the repository's once: with PYTHONDONTWRITEBYTECODE
# set, every release process otherwise recompiles Prefect at start (about 5 s
# each), and every process of the pipeline or the sandbox its own modules
# (about 0.1 s each; the suite starts hundreds).

SHELL := /bin/bash
UV ?= python3 -m uv
export UV_LINK_MODE ?= copy

.PHONY: setup browser demo test sandbox-up sandbox-down lint bench screenshots

setup:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check uv
	@$(UV) sync --quiet --frozen --all-extras --compile-bytecode
	@$(UV) run --frozen python -m compileall -q -j 0 flows tasks sandbox harness bench tools >/dev/null

# Debian's Chromium, which Playwright drives (it downloads no browser): the UI tests and screenshots read pages with it.
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

sandbox-up: setup
	@$(UV) run --frozen python -m sandbox up

sandbox-down:
	@$(UV) run --frozen python -m sandbox down

demo: setup
	@$(UV) run --frozen python -m sandbox.demo

# The suite's sessions start sandboxes of their own and share only the engine (tests/conftest.py).
test: setup browser
	@$(UV) run --frozen python -m sandbox up --engine-only
	@$(UV) run --frozen pytest -n 4 --dist loadfile --no-loadscope-reorder --durations=25

lint: setup
	@$(UV) run --frozen ruff check flows tasks sandbox tests bench harness tools
	@$(UV) run --frozen mypy
	@$(UV) run --frozen python tools/check_rooms.py

bench: sandbox-up
	@$(UV) run --frozen python -m bench

# The key Prefect UI pages of the last `make demo`, by Debian's Chromium (headless), into docs/screenshots/.
screenshots: setup browser
	@$(UV) run --frozen python -m sandbox.screenshots
