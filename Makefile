# thinkv-sim: `make run` replays the shipped sample trace, `make test` runs the test suite.
# Both install the system packages they need (scripts/ensure-deps.sh) on a fresh Debian machine.
# `make test-recorder` builds the Python environment of tools/record_trace.py (PyTorch,
# transformers; cached in .venv-recorder) and runs its tests.

SWIFT     ?= swift
# The attention kernels' instruction set, from what this CPU has: AVX-512 (16-lane kernels,
# FMA), else AVX2 + FMA (8 lanes); the plain build (no flags) runs anywhere x86-64 or arm64
# does. All three give the same bits, but for FMA's rounding: the plain build has none.
HAS_CPU_FLAGS = $(shell uname -m | grep -q x86_64 && for f in $(1); do grep -qw $$f /proc/cpuinfo 2>/dev/null || exit 0; done && echo yes)
ifneq ($(call HAS_CPU_FLAGS,avx512f avx512bw avx512dq avx512vl fma),)
CPU_FLAGS ?= -Xswiftc -target-cpu -Xswiftc skylake-avx512 -Xswiftc -DTHINKV_FMA -Xswiftc -DTHINKV_AVX512
else ifneq ($(call HAS_CPU_FLAGS,avx2 fma),)
CPU_FLAGS ?= -Xswiftc -target-cpu -Xswiftc haswell -Xswiftc -DTHINKV_FMA
endif
SWIFTFLAGS ?= $(CPU_FLAGS)
# Release builds drop dynamic exclusivity checks from the hot loops; tests keep them.
RELEASEFLAGS ?= $(SWIFTFLAGS) -Xswiftc -enforce-exclusivity=unchecked
RELEASE   := .build/release/thinkv-sim
SAMPLE    := traces/sample-synthetic.h5
REAL      := traces/smollm2-135m-math.h5
# ThinKV's thought-classifier thresholds, calibrated on each trace (thinkv-sim calibrate).
SAMPLE_CALIBRATION := configs/thinkv-synthetic.json
REAL_CALIBRATION   := configs/thinkv-smollm2-135m.json
# `make sweep`: the config, its results CSV (passed with -o so the plot step reads the same
# file) and the figure directory.
SWEEP_CONFIG ?= configs/budget-sweep.json
SWEEP_CSV    ?= out/budget-sweep.csv
SWEEP_PLOTS  ?= out
# The equal-memory sweep: every budgeted policy at matched KV percentages, its figures in their own directory.
EQUAL_CONFIG ?= configs/equal-memory.json
EQUAL_CSV    ?= out/equal-memory.csv
EQUAL_PLOTS  ?= out/equal-memory
BUDGET    ?= 256
POLICIES  ?= full,h2o,streaming,snapkv,rkv,kivi,thinkv,thinkv-tbq,thinkv-tbe
PYTHON    ?= python3
RECORDER_VENV ?= .venv-recorder
# The test packages' environment lives in the user's cache, not in the work tree, so that a new
# clone reuses it; it is keyed by the package list's content (a changed list installs anew).
PYTHON_VENV_KEY := $(shell cat python/requirements-test.txt 2>/dev/null | cksum | cut -d' ' -f1)
PYTHON_VENV   ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/thinkv-sim/python-$(PYTHON_VENV_KEY)

.PHONY: all deps build run format lint test test-slow test-python test-slurm python-venv bench bench-torch sweep clean help recorder-venv test-recorder

all: build

help:
	@echo "make run    build (release), inspect the synthetic sample, replay both shipped traces through every policy"
	@echo "make test   build and run the test suite (Swift, then the Python package's)"
	@echo "make format  reformat the Swift sources with swift-format (.swift-format: 4 spaces, 120 columns)"
	@echo "make lint   check that the Swift sources are as make format leaves them, no line over 120 columns"
	@echo "make test-slow  the slow Swift tests: whole-trace replays, every policy many times over (CI runs both)"
	@echo "make bench  replay benchmark (release build)"
	@echo "make bench-torch  PyTorch/NumPy peers of the 8K and 32K full,h2o replays, checked and timed against it"
	@echo "make sweep  budget sweep and equal-memory sweep over the sample traces, CSVs + plots in out/"
	@echo "make test-recorder  Python env of tools/record_trace.py (cached in $(RECORDER_VENV)) and its tests"
	@echo "make test-slurm  docs/cluster.md's Slurm scripts on a one-node Slurm started here (root; skips without Slurm)"

deps:
	@scripts/ensure-deps.sh

build: deps
	$(SWIFT) build -c release $(RELEASEFLAGS) --product thinkv-sim

run: build
	$(RELEASE) inspect $(SAMPLE) --thoughts --calibration $(SAMPLE_CALIBRATION)
	@echo
	$(RELEASE) replay $(SAMPLE) --policy $(POLICIES) --budget $(BUDGET) --calibration $(SAMPLE_CALIBRATION)
	@echo
	$(RELEASE) replay $(REAL) --policy $(POLICIES) --budget $(BUDGET) --calibration $(REAL_CALIBRATION)

# The Swift tests run with the Python environment first on PATH: its NumPy and h5py run the
# NumPy re-derivations of the policies that the cross-check tests compare kept sets with.
# Test cases run in TEST_WORKERS processes side by side (XCTest's --parallel); the cases that
# replay whole traces, or every policy and composition several times over, through the debug
# build form the slow tier, `make test-slow` (CI runs both).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 2 ] && echo $$n || echo 3)
space        := $(empty) $(empty)
SLOW_TESTS   := $(subst $(space),,UnreachableTargetTests.testRKVAtFivePercentNamesADivideThatReachesIt| \
	ReadmeCommandTests.testEveryReadmeShellCommandRuns| \
	ShippedTraceTests.testSyntheticSampleCalibratesTriModalAndClassifiesItsLabels| \
	OnePassMatchingTests.testSameBudgetsAsTheBisectionOnThe| \
	OnePassMatchingTests.testProgressNeverGoesBackwards| \
	PolicyAlgebraTests.testExistingPoliciesEqualTheirCompositionsOnTheShippedTraces| \
	PolicyConformanceTests.testSampledMetricStepsLeaveWhatEveryPolicyKeepsUnchanged| \
	PolicyConformanceTests.testResultsAreIdenticalForAnyThreadCountOrChunkSizeAndRepeatable| \
	PolicyConformanceTests.testUnmeasuredSteppingDecidesAsTheReplay)
SWIFT_TEST    = PATH="$(abspath $(PYTHON_VENV))/bin:$$PATH" $(SWIFT) test --skip-build $(SWIFTFLAGS) \
	--parallel --num-workers $(TEST_WORKERS) --disable-swift-testing --xunit-output .build/xunit-$(1).xml

test: deps python-venv
	$(SWIFT) build --build-tests $(SWIFTFLAGS)
	$(call SWIFT_TEST,fast) --skip '$(SLOW_TESTS)' || { scripts/test-summary.sh .build/xunit-fast.xml; exit 1; }
	@scripts/test-summary.sh .build/xunit-fast.xml
	@$(MAKE) --no-print-directory test-python

test-slow: deps python-venv
	$(SWIFT) build --build-tests $(SWIFTFLAGS)
	$(call SWIFT_TEST,slow) --filter '$(SLOW_TESTS)' || { scripts/test-summary.sh .build/xunit-slow.xml; exit 1; }
	@scripts/test-summary.sh .build/xunit-slow.xml

# The code's layout is swift-format's with .swift-format (4-space indents, 120 columns, no
# rewriting rules): `make format` applies it, `make lint` checks it, and also that no line is
# over 120 columns (swift-format leaves long string literals and comments as they are).
SWIFT_SOURCES = Package.swift Sources Tests
format:
	$(SWIFT) format --in-place --recursive --parallel $(SWIFT_SOURCES)

lint:
	$(SWIFT) format lint --strict --recursive --parallel $(SWIFT_SOURCES)
	@long=$$(find Sources Tests -name '*.swift' -exec env LC_ALL=C.UTF-8 grep -nHE '^.{121,}' {} + | cut -c1-100); \
		if [ -n "$$long" ]; then echo "$$long"; echo "lint: lines over 120 characters"; exit 1; fi

# The Python package (python/) against the debug binary just built, figures drawn off-screen.
# Its environment is cached in $(PYTHON_VENV); a missing package fails the tests, never skips them.
test-python: python-venv
	PYTHONPATH=python MPLBACKEND=Agg THINKV_SIM=$(CURDIR)/.build/debug/thinkv-sim \
		$(PYTHON_VENV)/bin/python -m pytest python/tests -q

# The Slurm scripts of docs/cluster.md (scripts/slurm/) as array jobs on a one-node Slurm the
# test starts itself (Debian's slurmctld, slurmd and munge; root), against one run each. Not part
# of `make test`: it skips, with the reason, where Slurm is not installed or cannot start.
test-slurm: build
	scripts/test-slurm.sh

# The packages of python/requirements-test.txt (numpy, pandas, h5py, matplotlib, pytest), cached
# in $(PYTHON_VENV). A machine that cannot install them fails the tests: a cross-check that
# silently skips checks nothing. Installed aside and moved into place, so an interrupted install
# leaves no half environment behind.
python-venv: $(PYTHON_VENV)/.installed

$(PYTHON_VENV)/.installed:
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || scripts/ensure-deps.sh --python-venv
	rm -rf $(PYTHON_VENV).partial
	$(PYTHON) -m venv $(PYTHON_VENV).partial
	$(PYTHON_VENV).partial/bin/python -m pip install --quiet -r python/requirements-test.txt
	touch $(PYTHON_VENV).partial/.installed
	rm -rf $(PYTHON_VENV) && mv $(PYTHON_VENV).partial $(PYTHON_VENV)

bench: build
	$(RELEASE) bench

# Optional peer run (tools/bench_torch.py, docs/performance.md): PyTorch/NumPy replays of
# `replay --policy full,h2o --budget 1024` on the 8K and 32K bench traces, checked to keep
# thinkv-sim's kept sets and metrics, timed against it; the simple peer only at 8K (it takes
# minutes at 32K). Needs PyTorch, h5py and numpy in BENCH_PYTHON (default: .venv-bench, else
# the recorder's environment). The traces are `make bench`'s, made here if missing.
BENCH_PYTHON ?= $(firstword $(wildcard .venv-bench/bin/python $(RECORDER_VENV)/bin/python) .venv-bench/bin/python)
BENCH_TRACE   = .build/bench/synthetic-T$(1)-P512-H14x2-D128.h5
bench-torch: build $(call BENCH_TRACE,8192) $(call BENCH_TRACE,32768)
	$(BENCH_PYTHON) tools/bench_torch.py $(call BENCH_TRACE,8192) --budget 1024 --repeat 3 --peer strong,simple \
		--thinkv $(RELEASE)
	$(BENCH_PYTHON) tools/bench_torch.py $(call BENCH_TRACE,32768) --budget 1024 --repeat 1 --thinkv $(RELEASE)

# A bench trace as `thinkv-sim bench` makes it (order-only on the build: a new binary does not
# remake it); written aside first so an interrupted synth leaves no trace behind.
.build/bench/synthetic-T%-P512-H14x2-D128.h5: | build
	@mkdir -p $(@D)
	$(RELEASE) synth -o $@.partial --tokens $* --prompt 512 --layers 1 --q-heads 14 --kv-heads 2 \
		--head-dim 128 --dtype float16 --seed 1 --force
	mv $@.partial $@

# Resumable: an interrupted `make sweep` continues where it stopped.
sweep: build
	$(RELEASE) sweep $(SWEEP_CONFIG) -o $(SWEEP_CSV)
	$(RELEASE) plot $(SWEEP_CSV) -o $(SWEEP_PLOTS)
	$(RELEASE) sweep $(EQUAL_CONFIG) -o $(EQUAL_CSV)
	$(RELEASE) plot $(EQUAL_CSV) -o $(EQUAL_PLOTS)

# The recorder's environment: about 5.6 GB (the default PyTorch wheel brings CUDA libraries),
# rebuilt only when tools/requirements.txt changes.
recorder-venv: $(RECORDER_VENV)/.installed

$(RECORDER_VENV)/.installed: tools/requirements.txt
	$(PYTHON) -m venv $(RECORDER_VENV)
	$(RECORDER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(RECORDER_VENV)/bin/python -m pip install --quiet -r tools/requirements.txt
	touch $@

# The validate test uses the thinkv-sim binary when one is built (release or debug).
test-recorder: recorder-venv
	$(RECORDER_VENV)/bin/python -m pytest tools/tests -v

clean:
	rm -rf .build out
