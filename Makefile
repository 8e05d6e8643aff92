# SlaveAPI: `make run` serves the simulated lab, `make test` runs the whole suite.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 9999
LAB_SLAVES ?= 12

.PHONY: run test lint venv system-packages clean

$(STAMP): setup.cfg setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[lab,test]' --config-settings editable_mode=compat
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	@echo "SlaveAPI: http://127.0.0.1:$(PORT)/ serving a simulated lab of $(LAB_SLAVES) machines"
	@echo "  list machines:  curl http://127.0.0.1:$(PORT)/slaves"
	@echo "  uptime:         curl -d waittime=30 http://127.0.0.1:$(PORT)/slaves/bld-linux64-lab-001/actions/buildslave_uptime"
	@echo "  reboot:         curl -d waittime=60 http://127.0.0.1:$(PORT)/slaves/bld-linux64-lab-001/actions/reboot"
	$(BIN)/twistd -n -r asyncio --pidfile= slaveapi --lab $(LAB_SLAVES) --data data \
		--listen tcp:$(PORT):interface=127.0.0.1

system-packages:
	@scripts/ensure-system-packages

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: $(STAMP) system-packages lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) data build *.egg-info
