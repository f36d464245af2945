# thinkv-sim: `make run` replays the shipped sample trace, `make test` runs the test suite.
# Both install the system packages they need (scripts/ensure-deps.sh) on a fresh Debian machine.

SWIFT     ?= swift
RELEASE   := .build/release/thinkv-sim
SAMPLE    := traces/sample-synthetic.h5
BUDGET    ?= 256

.PHONY: all deps build run test bench sweep clean help

all: build

help:
	@echo "make run    build (release) and replay the sample trace through every policy"
	@echo "make test   build and run the test suite"
	@echo "make bench  replay benchmark (release build)"
	@echo "make sweep  budget sweep over the sample traces, CSV + plots in out/"

deps:
	@scripts/ensure-deps.sh

build: deps
	$(SWIFT) build -c release --product thinkv-sim

run: build
	$(RELEASE) inspect $(SAMPLE)
	@echo
	$(RELEASE) replay $(SAMPLE) --policy full --budget $(BUDGET)

test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test

clean:
	rm -rf .build out
