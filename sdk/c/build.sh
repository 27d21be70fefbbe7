#!/bin/sh
# Builds a Ferry plugin written in C into a WebAssembly component.
#
#   build.sh [APP_DIR] [OUT.wasm] [WIT_DIR]
#
# APP_DIR (default: this script's folder) holds the plugin's `.c` files;
# OUT defaults to APP_DIR/NAME.wasm, NAME being APP_DIR's name; WIT_DIR
# (default: APP_DIR/wit) holds Ferry's WIT. FERRY_WORLD picks the world
# (default: service-with-events).
#
# The tools: clang 14, wasm-ld, wasi-libc and clang's wasm32 builtins from
# Debian's packages (installed when missing and this runs as root); the
# bindings generator wit-bindgen-cli (pinned below), installed on first use
# with cargo into $FERRY_TOOLS/c (default: APP_DIR/.tools/c); and the
# linker that turns the module into a component, wasm-component-ld, which
# ships with the Rust toolchain (it holds the WASI reactor adapter).
set -eu

WIT_BINDGEN=0.61.1
DEBIAN_PACKAGES="clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32"

here=$(cd "$(dirname "$0")" && pwd)
app=$(cd "${1:-$here}" && pwd)
out=${2:-$app/$(basename "$app").wasm}
wit=${3:-$app/wit}
world=${FERRY_WORLD:-service-with-events}
tools=${FERRY_TOOLS:-$app/.tools}/c

builtins=/usr/lib/llvm-14/lib/clang/14.0.6/lib/wasi/libclang_rt.builtins-wasm32.a
if ! command -v clang-14 >/dev/null || ! command -v wasm-ld-14 >/dev/null \
    || [ ! -f /usr/lib/wasm32-wasi/crt1-reactor.o ] || [ ! -f "$builtins" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing $DEBIAN_PACKAGES from Debian's packages" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $DEBIAN_PACKAGES >&2
    else
        echo "build.sh: needs Debian's $DEBIAN_PACKAGES; install them with: sudo apt-get install $DEBIAN_PACKAGES" >&2
        exit 1
    fi
fi

bindgen=$tools/wit-bindgen-$WIT_BINDGEN/bin/wit-bindgen
if [ ! -x "$bindgen" ]; then
    echo "installing wit-bindgen-cli $WIT_BINDGEN into $tools (once; a few minutes)" >&2
    cargo install --quiet --locked wit-bindgen-cli --version "$WIT_BINDGEN" \
        --no-default-features --features c --root "$tools/wit-bindgen-$WIT_BINDGEN" >&2
fi

if ! command -v rustc >/dev/null; then
    echo "build.sh: needs the Rust toolchain's wasm-component-ld (install Rust with rustup)" >&2
    exit 1
fi
linker=$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/wasm-component-ld
if [ ! -x "$linker" ]; then
    echo "build.sh: $linker is missing; a Rust toolchain of 1.82 or later ships it" >&2
    exit 1
fi

case $out in /*) ;; *) out=$(pwd)/$out ;; esac
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
if ! "$bindgen" c --world "$world" --out-dir "$gen" "$wit" >"$gen/bindgen.log" 2>&1; then
    cat "$gen/bindgen.log" >&2
    exit 1
fi
stem=$(echo "$world" | tr - _)

# The JSON helper: the app's own copy (a skeleton has one), else the SDK's.
json=""
if [ ! -f "$app/ferry_json.c" ] && [ -f "$here/ferry_json.c" ]; then
    json="$here/ferry_json.c"
fi
clang-14 --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Wno-unused-parameter \
    -I"$gen" -I"$app" -I"$here" \
    -fuse-ld="$linker" -Wl,--wasm-ld-path="$(command -v wasm-ld-14)" -Wl,--wasi-adapter=reactor \
    -Wl,--strip-debug \
    "$app"/*.c $json "$gen/$stem.c" "$gen/${stem}_component_type.o" \
    -o "$out.partial"
mv "$out.partial" "$out"
echo "built $out" >&2
