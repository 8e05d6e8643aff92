# SlaveAPI: `make run` serves the simulated lab, `make test` runs the whole suite.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 9999
LAB_SLAVES ?= 12

.PHONY: run test lint docs venv system-packages clean

$(STAMP): setup.cfg setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[lab,test,docs]' --config-settings editable_mode=compat
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	@echo "SlaveAPI: http://127.0.0.1:$(PORT)/ serving a simulated lab of $(LAB_SLAVES) machines"
	@echo "  list machines:  curl http://127.0.0.1:$(PORT)/slaves"
	@echo "  uptime:         curl -d waittime=30 http://127.0.0.1:$(PORT)/slaves/bld-linux64-lab-001/actions/buildslave_uptime"
	@echo "  reboot:         curl -d waittime=60 http://127.0.0.1:$(PORT)/slaves/bld-linux64-lab-001/actions/reboot"
	@echo "  fleet page:     http://127.0.0.1:$(PORT)/   (health, history, actions, live progress)"
	@echo "  CLI:            SLAVEAPI_URL=http://127.0.0.1:$(PORT) $(BIN)/slaveapi-cli run reboot bld-linux64-lab-006"
	@echo "  metrics:        curl http://127.0.0.1:$(PORT)/metrics"
	$(BIN)/twistd -n -r asyncio --pidfile= slaveapi --lab $(LAB_SLAVES) --data data \
		--listen tcp:$(PORT):interface=127.0.0.1

system-packages:
	@scripts/ensure-system-packages

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# The docs are built after the tests, so that they show the browser test's screenshot.
test: $(STAMP) system-packages lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) docs

# Warnings are errors (-W), broken references included (-n); the API reference is generated
# from the OpenAPI document (docs/_ext/slaveapi_docs.py).
docs: $(STAMP)
	$(BIN)/sphinx-build -n -W --keep-going -q -b html docs build/docs
	@echo "Documentation: build/docs/index.html"

clean:
	rm -rf $(VENV) data build *.egg-info
