# Ferry's two set-up commands are `make run` and `make test`; everything they
# need (the wasm32-wasip2 target, the example plugins, the host) is built here.

CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target
# The pinned Python, JavaScript and C plugin toolchains (componentize-py,
# componentize-js, wit-bindgen) are installed here on first use.
export FERRY_TOOLS ?= $(CURDIR)/.tools
RUST_PLUGINS := echo faulty todo orders
PLUGINS := $(RUST_PLUGINS) hello-py hello-js hello-c
WASM_DIR := $(CARGO_TARGET_DIR)/wasm32-wasip2/plugin
FERRY := $(CARGO_TARGET_DIR)/release/ferry

.PHONY: run test plugins host toolchain bench wrk clean wit-reference fuzz

## Build the example plugins and serve them on the embedded defaults.
run: plugins host
	$(FERRY) serve

## The whole test suite: unit tests, then end-to-end tests against the real binary.
test: plugins host
	$(CARGO) test --release -p ferry-sdk -p ferry-host -p ferry-tests

## Benchmarks: socket and HTTP echo, and todo.get on each database engine,
## Ferry against native servers, in one run each; and the plugin languages.
bench: plugins host wrk
	$(CARGO) bench -p ferry-host -p ferry-tests --bench socket_echo --bench http_echo --bench todo_get --bench languages --bench events --bench calls --bench cold_start --bench websocket --bench brokers --bench cluster

## Build the example plugins (Rust, Python, JavaScript, C) into deploy/.
plugins: toolchain $(WASM_DIR)/hello-py.wasm $(WASM_DIR)/hello-js.wasm $(WASM_DIR)/hello-c.wasm
	@# The second build of echo, for the hot-swap tests, first: the plain
	@# build below then leaves echo.wasm as it should be.
	$(CARGO) build --profile plugin --target wasm32-wasip2 -p echo --features echo/v2
	@cp $(WASM_DIR)/echo.wasm $(WASM_DIR)/echo-v2.wasm
	$(CARGO) build --profile plugin --target wasm32-wasip2 $(addprefix -p ,$(RUST_PLUGINS))
	@mkdir -p deploy
	@for p in $(PLUGINS); do \
		cp $(WASM_DIR)/$$p.wasm deploy/$$p.wasm; \
		if [ -f plugins/$$p/$$p.yaml ]; then cp plugins/$$p/$$p.yaml deploy/$$p.yaml; fi; \
	done
	@echo "plugins in deploy/: $(PLUGINS)"

host:
	$(CARGO) build --release -p ferry-host

# Python and JavaScript plugins, built by their own toolchains against wit/.
$(WASM_DIR)/hello-py.wasm: plugins/hello-py/app.py sdk/python/build.sh wit/plugin.wit
	@mkdir -p $(WASM_DIR)
	sdk/python/build.sh plugins/hello-py $@ wit

$(WASM_DIR)/hello-js.wasm: plugins/hello-js/app.js sdk/js/build.sh sdk/js/package.json sdk/js/package-lock.json wit/plugin.wit
	@mkdir -p $(WASM_DIR)
	sdk/js/build.sh plugins/hello-js $@ wit

# The C plugin: clang and wasi-libc from Debian, bindings by wit-bindgen.
$(WASM_DIR)/hello-c.wasm: plugins/hello-c/app.c sdk/c/build.sh sdk/c/ferry_json.c sdk/c/ferry_json.h wit/plugin.wit
	@mkdir -p $(WASM_DIR)
	sdk/c/build.sh plugins/hello-c $@ wit

## Regenerate wit/REFERENCE.md from wit/plugin.wit (a test checks they agree).
wit-reference:
	$(CARGO) run --release -q -p ferry-tests --bin wit-reference > wit/REFERENCE.md

# The HTTP benchmark's load generator, from Debian's packages.
wrk:
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

## Coverage-guided fuzzing of the host's parsers (frames, envelopes, JWT
## headers, PostgreSQL placeholders, plugin answers' JSON): each target for FUZZ_SECONDS (60).
## cargo-fuzz is installed into $(FERRY_TOOLS) on first use.
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ := $(FERRY_TOOLS)/cargo-fuzz-$(CARGO_FUZZ_VERSION)/bin/cargo-fuzz
fuzz: $(CARGO_FUZZ)
	PATH="$(dir $(CARGO_FUZZ)):$$PATH" host/fuzz/run.sh $(FUZZ_TARGETS)

$(CARGO_FUZZ):
	$(CARGO) install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION) --root $(FERRY_TOOLS)/cargo-fuzz-$(CARGO_FUZZ_VERSION)

toolchain:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

clean:
	rm -rf deploy data run .tools
	$(CARGO) clean
