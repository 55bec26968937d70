# napari-cell-unet: `make run` (demo) and `make test` (whole suite), both self-installing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
OUTPUT ?= output
STAMP  := $(VENV)/.installed

.PHONY: run test lint system-deps install clean

$(STAMP): pyproject.toml
	bash scripts/install.sh "$(PYTHON)" "$(VENV)"
	touch $(STAMP)

install: $(STAMP)

system-deps:
	bash scripts/system_deps.sh

## Run the demo: napari with the plugin's widgets, a real sample image, segmented by the bundled model.
## Without a display it runs under Xvfb and leaves a screenshot and the labels TIFF in $(OUTPUT)/.
run: system-deps $(STAMP)
	bash scripts/with_display.sh $(PY) scripts/demo.py --output-dir $(OUTPUT) $(DEMO_ARGS)

## Run the whole test suite under a virtual display.
test: system-deps $(STAMP)
	bash scripts/with_display.sh $(PY) -m pytest -ra -q $(PYTEST_ARGS)

## Lint (ruff, configured in pyproject.toml); CI runs it before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts benchmarks

clean:
	rm -rf $(VENV) $(OUTPUT) .pytest_cache
