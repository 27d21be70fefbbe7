#!/bin/sh
# Builds a Ferry plugin written in JavaScript into a WebAssembly component.
#
#   build.sh [APP_DIR] [OUT.wasm] [WIT_DIR]
#
# APP_DIR (default: this script's folder) holds `app.js`, an ES module that
# exports `handler`; OUT defaults to APP_DIR/NAME.wasm, NAME being APP_DIR's
# name; WIT_DIR (default: APP_DIR/wit) holds Ferry's WIT. The toolchain
# pinned by package.json and package-lock.json beside this script
# (componentize-js) is installed on first use into $FERRY_TOOLS/js
# (default: APP_DIR/.tools/js).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
app=$(cd "${1:-$here}" && pwd)
out=${2:-$app/$(basename "$app").wasm}
wit=${3:-$app/wit}
tools=${FERRY_TOOLS:-$app/.tools}/js

# Reinstall whenever the pinned versions change. (`npm install` rather than
# `npm ci`: the lock leaves out other platforms' optional packages, which
# `npm ci` refuses; the versions installed are the locked ones either way.)
if ! cmp -s "$here/package-lock.json" "$tools/.installed-lock.json"; then
    echo "installing the JavaScript toolchain into $tools" >&2
    rm -rf "$tools"
    mkdir -p "$tools"
    cp "$here/package.json" "$here/package-lock.json" "$tools/"
    (cd "$tools" && npm install --no-audit --no-fund --loglevel=error)
    cp "$here/package-lock.json" "$tools/.installed-lock.json"
fi

# Without `-d http fetch-event` the component would import wasi:http, which
# a Ferry plugin is not given.
"$tools/node_modules/.bin/componentize-js" "$app/app.js" --wit "$wit" --world-name service-with-events \
    -d http fetch-event -o "$out.partial"
mv "$out.partial" "$out"
echo "built $out" >&2
