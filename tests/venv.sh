# The one Python virtual environment of the test tooling, `target/venv`.
# Sourced by the run.sh scripts (from the repository's root):
#
#   . tests/venv.sh
#   venv_need playwright.sync_api=playwright schemathesis
#
# Creates the environment if it is missing (Debian's `python3-venv` is
# installed when `python3 -m venv` lacks ensurepip), puts its `bin/` first
# on PATH, so `python3` below is the environment's, and `venv_need` installs
# with its pip the packages whose module does not import (MODULE=PACKAGE, or
# a name that is both). Quick when everything is there; never touches the
# system Python.

VENV_DIR="$(pwd)/target/venv"

venv_create() {
    [ -x "$VENV_DIR/bin/python3" ] && return 0
    echo "== creating $VENV_DIR"
    mkdir -p "$(dirname "$VENV_DIR")"
    if ! python3 -m venv "$VENV_DIR" 2>/dev/null; then
        rm -rf "$VENV_DIR"
        echo "== installing python3-venv (Debian)"
        if [ "$(id -u)" = 0 ]; then sudo=""; else sudo=sudo; fi
        $sudo apt-get update -qq
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$VENV_DIR"
    fi
}

venv_need() {
    local spec module missing=()
    for spec in "$@"; do
        module="${spec%%=*}"
        "$VENV_DIR/bin/python3" -c "import $module" 2>/dev/null || missing+=("${spec#*=}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "== installing ${missing[*]} (pip, into $VENV_DIR)"
        "$VENV_DIR/bin/python3" -m pip install --quiet --disable-pip-version-check "${missing[@]}"
    fi
}

venv_create
export VIRTUAL_ENV="$VENV_DIR"
export PATH="$VENV_DIR/bin:$PATH"
