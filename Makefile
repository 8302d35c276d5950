# The front door: make run | test | bench | protos | lint | web | browser. README and CI call these.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
GEN := gen
PROTOS := $(wildcard protos/chatkore/v1/*.proto)
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)
WEB := edge/web
WEB_STAMP := $(WEB)/node_modules/.installed
CODEX_STAMP := tests/codex/node_modules/.installed
CLAUDE_STAMP := tests/claude_code/node_modules/.installed
CHROMIUM ?= /usr/bin/chromium
CHECKOV := $(VENV)/checkov/.installed-$(shell cksum < requirements-checkov.txt | cut -d' ' -f1)
export PYTHONPATH := $(CURDIR)/$(GEN):$(CURDIR)

.PHONY: run test bench protos lint clean venv web browser

run: $(STAMP) $(GEN)/.stamp $(WEB_STAMP)
	$(PY) -m tools.run

test: $(STAMP) $(GEN)/.stamp $(WEB_STAMP) $(CODEX_STAMP) $(CLAUDE_STAMP) browser $(CHECKOV)
	$(PY) -m pytest $(PYTEST_ARGS)

# PEER=litellm adds LiteLLM's proxy to the same rounds; SOAK=1 runs the 10-minute soak instead;
# PROFILE=1 samples each service with py-spy under load; BENCH_ARGS passes anything else
# (`.venv/bin/python -m bench.run --help`, `-m bench.profile --help`).
bench: $(STAMP) $(GEN)/.stamp
	$(PY) -m $(if $(PROFILE),bench.profile,bench.run $(if $(PEER),--peer $(PEER)) $(if $(SOAK),--soak)) $(BENCH_ARGS)

protos: $(GEN)/.stamp

lint: $(STAMP) $(GEN)/.stamp
	$(VENV)/bin/ruff check services edge tools tests bench

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' || \
	  { echo "chatkore needs Python 3.11 or newer (found $(PYTHON))"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $@

# checkov pins packages that pytest cannot share, so it has a venv of its own (tests/test_deploy.py).
$(CHECKOV): requirements-checkov.txt | $(STAMP)
	test -x $(VENV)/checkov/bin/python || $(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install --disable-pip-version-check -q -r requirements-checkov.txt
	rm -f $(VENV)/checkov/.installed-*
	touch $@

# Stubs are generated, never edited, and not committed: protos/ is the one source.
$(GEN)/.stamp: $(PROTOS) $(STAMP)
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(GEN) --grpc_python_out=$(GEN) --pyi_out=$(GEN) $(PROTOS)
	touch $@

# The pages' libraries (Markdown, sanitising, highlighting, charts), pinned by the
# committed package-lock.json; installed, never built or bundled.
web: $(WEB_STAMP)

$(WEB_STAMP): $(WEB)/package.json $(WEB)/package-lock.json
	@command -v npm >/dev/null || { echo "chatkore's web pages need npm (Debian: apt-get install npm)"; exit 1; }
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# OpenAI's Codex CLI (a native binary per platform), pinned by its lock file, for tests/test_codex_cli.py.
$(CODEX_STAMP): tests/codex/package.json tests/codex/package-lock.json
	@command -v npm >/dev/null || { echo "the Codex CLI test needs npm (Debian: apt-get install npm)"; exit 1; }
	cd tests/codex && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Anthropic's Claude Code (a native binary per platform), pinned by its lock file, for tests/test_claude_code.py.
# Its install script only picks that binary, which npm has already placed; it wants Node 22, hence --ignore-scripts.
$(CLAUDE_STAMP): tests/claude_code/package.json tests/claude_code/package-lock.json
	@command -v npm >/dev/null || { echo "the Claude Code test needs npm (Debian: apt-get install npm)"; exit 1; }
	cd tests/claude_code && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

# Debian's chromium for the browser tests (Playwright drives it; its own download is not used).
browser:
	@test -x $(CHROMIUM) || { \
	  echo "installing chromium for the browser tests"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }
	@fc-list :lang=zh 2>/dev/null | grep -q . || { \
	  echo "installing a Chinese font for the zh-CN pages' screenshots"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -q fonts-wqy-microhei || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q fonts-wqy-microhei; }; }

clean:
	rm -rf $(GEN) $(VENV) $(WEB)/node_modules
