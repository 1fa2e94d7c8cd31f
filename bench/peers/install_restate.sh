#!/bin/sh
# Installs the Restate server (the npm package @restatedev/restate-server, which ships a
# prebuilt binary for this platform) into a cache folder, for bench/peers_workflow.py.
#
#     sh bench/peers/install_restate.sh [FOLDER]
#
# FOLDER defaults to $RESTATE_CACHE, else ~/.cache/dispatchlet-bench/restate. Prints the
# path of the platform's restate-server binary; the bench finds it there on its own (or
# pass it with --restate-server).
set -eu
VERSION="${RESTATE_VERSION:-1.7}"
FOLDER="${1:-${RESTATE_CACHE:-$HOME/.cache/dispatchlet-bench/restate}}"
command -v npm >/dev/null || { echo "npm is needed (Debian: apt-get install npm)" >&2; exit 1; }
mkdir -p "$FOLDER"
npm install --prefix "$FOLDER" --no-save --no-audit --no-fund \
    "@restatedev/restate-server@$VERSION" >&2
ls "$FOLDER"/node_modules/@restatedev/restate-server-*/bin/restate-server
