# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint audit clean chromium

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: install
	$(BIN)/python -m shared.devserver

test: install chromium lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Static checks, configured in pyproject.toml ([tool.ruff], [tool.mypy]); `make test` runs them first.
lint: install
	$(BIN)/ruff check
	$(BIN)/mypy

# The dashboard's browser test (tests/test_dashboard.py) drives Debian's chromium through
# Playwright; Playwright never downloads a browser here. Installed when missing and we are root;
# if that fails, the test fails and says why.
CHROMIUM := /usr/bin/chromium
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "make: installing Debian's chromium for the dashboard's browser test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "make: WARNING: could not install chromium; the dashboard's browser test will fail" >&2; \
	  else \
	    echo "make: WARNING: $(CHROMIUM) is missing and we are not root; run 'apt-get install chromium'" \
	         "as root, or the dashboard's browser test will fail" >&2; \
	  fi; \
	fi

clean:
	rm -rf $(VENV) var .pytest_cache

# pip-audit over what `make install` installed from the pins; see "Audit" in docs/operations.md.
audit: install
	$(BIN)/python scripts/audit.py
