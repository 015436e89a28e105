# Two commands do everything on a fresh machine with only Python 3.10+:
#   make demo   create the environment if needed and run the demo flow
#   make test   create the environment if needed and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.labelfix-installed
DEMO_OUT ?= demo_out

.PHONY: demo test env browser bench clean-env

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,bench,mongo]"
	touch $(STAMP)

# Debian packages the tests need: headless Chromium for the browser tests of the FiftyOne
# App and the report (never a browser downloaded by a tool), and the Noto Color Emoji font
# of the second benchmark dataset (labelfix.data.scenes). Skipped when already there.
browser:
	@{ command -v chromium >/dev/null 2>&1 && test -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf; } || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null; fi; }

demo: env
	$(VENV)/bin/labelfix demo --out $(DEMO_OUT)

test: env browser
	$(PY) -m pytest -q -ra

bench: env
	$(PY) benchmarks/run_all.py

clean-env:
	rm -rf $(VENV)
