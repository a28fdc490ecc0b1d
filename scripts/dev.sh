#!/usr/bin/env bash
# One entry point for a fresh Debian machine:
#   bash scripts/dev.sh demo    install what is missing, then run `zkpubsub demo`
#   bash scripts/dev.sh test    install what is missing, then run the test suite
#   bash scripts/dev.sh check   ruff and mypy
#   bash scripts/dev.sh install only install (ZooKeeper from apt, .venv with the package)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${ZKPUBSUB_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else echo "need root (or sudo) to run: $*" >&2; exit 1
    fi
}

apt_install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

install_zookeeper() {
    if [ -n "${ZKPUBSUB_ZOOKEEPER_CLASSPATH:-}" ] || [ -n "${ZOOKEEPER_HOME:-}" ]; then
        return
    fi
    if [ -f /usr/share/java/zookeeper.jar ] && command -v java >/dev/null 2>&1; then
        return
    fi
    echo "installing ZooKeeper from Debian's packages..." >&2
    as_root apt-get update -qq
    apt_install zookeeper
}

install_venv() {
    local stamp="$VENV/.zkpubsub-installed"
    if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
        return
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        echo "creating $VENV..." >&2
        if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
            rm -rf "$VENV"
            apt_install python3-venv
            "$PYTHON" -m venv "$VENV"
        fi
    fi
    echo "installing zkpubsub and its test tools into $VENV..." >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[test,dev,bench]'
    touch "$stamp"
}

install_openssl() {
    # the secured-server tests make their certificates with openssl and keytool
    # (keytool comes with the JDK that ZooKeeper needs)
    if command -v openssl >/dev/null 2>&1; then
        return
    fi
    echo "installing openssl from Debian's packages..." >&2
    as_root apt-get update -qq
    apt_install openssl
}

install() {
    install_zookeeper
    install_openssl
    install_venv
}

case "${1:-}" in
    install) install ;;
    demo) install; shift; exec "$VENV/bin/zkpubsub" demo "$@" ;;
    test) install; shift; exec "$VENV/bin/pytest" -q tests "$@" ;;
    check)
        install
        "$VENV/bin/ruff" check .
        "$VENV/bin/ruff" format --check .
        "$VENV/bin/mypy"
        ;;
    *) echo "usage: bash scripts/dev.sh install|demo|test|check" >&2; exit 2 ;;
esac
