#!/bin/sh
# Builds a Ferry plugin written in Python into a WebAssembly component.
#
#   build.sh [APP_DIR] [OUT.wasm] [WIT_DIR]
#
# APP_DIR (default: this script's folder) holds `app.py`, which defines
# `class Handler(exports.Handler)` and `class EventHandler(exports.EventHandler)`; OUT defaults to APP_DIR/NAME.wasm, NAME
# being APP_DIR's name; WIT_DIR (default: APP_DIR/wit) holds Ferry's WIT.
# The pinned componentize-py is installed on first use into
# $FERRY_TOOLS/python (default: APP_DIR/.tools/python).
set -eu

COMPONENTIZE_PY=0.25.1

here=$(cd "$(dirname "$0")" && pwd)
app=$(cd "${1:-$here}" && pwd)
out=${2:-$app/$(basename "$app").wasm}
wit=${3:-$app/wit}
tools=${FERRY_TOOLS:-$app/.tools}/python

if [ ! -f "$tools/.componentize-py-$COMPONENTIZE_PY" ]; then
    echo "installing componentize-py $COMPONENTIZE_PY into $tools" >&2
    rm -rf "$tools"
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY"
    touch "$tools/.componentize-py-$COMPONENTIZE_PY"
fi

# componentize-py reads the module from the current folder; the output path
# is made absolute first.
case $out in /*) ;; *) out=$(pwd)/$out ;; esac
case $wit in /*) ;; *) wit=$(pwd)/$wit ;; esac
cd "$app"
"$tools/bin/componentize-py" -q -d "$wit" -w service-with-events componentize app -o "$out.partial"
mv "$out.partial" "$out"
echo "built $out" >&2
