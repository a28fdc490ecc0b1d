#!/usr/bin/env bash
# One entry point for a fresh Debian machine:
#   bash scripts/dev.sh demo    install what is missing, then run `zkpubsub demo`
#   bash scripts/dev.sh test    install what is missing, then run the test suite
#   bash scripts/dev.sh test-bench  the benchmark harness's tests (a quick run end to end)
#   bash scripts/dev.sh check   ruff and mypy
#   bash scripts/dev.sh install only install (ZooKeeper from apt, .venv with the package)
# ZooKeeper in Docker containers (zkpubsub.testing's testcontainers backend):
#   bash scripts/dev.sh test-containers [PYTEST ARGS]
#                               start Docker if none runs (installing it if missing), build
#                               the ZooKeeper image from Debian's packages unless
#                               $ZKPUBSUB_ZOOKEEPER_IMAGE names one, run a subset of the
#                               suite (or the given tests) in containers, stop what it started
#   bash scripts/dev.sh matrix [--suite S]... [--image I]...
#                               the core suite against each ZooKeeper version that Debian's
#                               releases ship; writes docs/zookeeper-versions.md
#   bash scripts/dev.sh pythons [3.X]... [-- PYTEST ARGS]
#                               the core suite on each other Python the package supports
#                               (default 3.10, 3.12, 3.13), each in a venv of its own under
#                               .venv-pythons/; a version not on the machine is reported and
#                               skipped, a failure of any other fails the command
#   bash scripts/dev.sh image [SUITE]   only build the image (zkpubsub-zookeeper:SUITE)
#   bash scripts/dev.sh docker-down     remove the backend's containers; stop a dockerd
#                                       that these commands started
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
    # the venv $1 (default $VENV), made by the Python $2 (default $PYTHON),
    # with zkpubsub and the extras $3 (default: all the suite and checks need)
    local venv="${1:-$VENV}" python="${2:-$PYTHON}" extras="${3:-test,dev,bench,testcontainers}"
    local stamp="$venv/.zkpubsub-installed"
    if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
        return
    fi
    if [ ! -x "$venv/bin/python" ]; then
        echo "creating $venv..." >&2
        if ! "$python" -m venv "$venv" 2>/dev/null; then
            rm -rf "$venv"
            apt_install python3-venv
            "$python" -m venv "$venv"
        fi
    fi
    echo "installing zkpubsub and its test tools into $venv..." >&2
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e ".[$extras]"
    touch "$stamp"
}

install_jdk() {
    # the wire format's Java client (tests/interop) runs as a source file:
    # the java that runs ZooKeeper must be a JDK, not only a runtime
    local java="java"
    if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then java="$JAVA_HOME/bin/java"; fi
    if "$java" --list-modules 2>/dev/null | grep -q '^jdk.compiler@'; then
        return
    fi
    echo "installing a JDK from Debian's packages..." >&2
    as_root apt-get update -qq
    apt_install openjdk-17-jdk-headless
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

install_chromium() {
    # the web console's tests drive Debian's chromium, headless, through
    # playwright (which is never let to download a browser of its own)
    if command -v chromium >/dev/null 2>&1 || [ -n "${ZKPUBSUB_CHROMIUM:-}" ]; then
        return
    fi
    echo "installing chromium from Debian's packages..." >&2
    as_root apt-get update -qq
    apt_install chromium
}

install() {
    install_zookeeper
    install_jdk
    install_openssl
    install_chromium
    install_venv
}

# -- Docker, for the container backend -------------------------------------------------
# dockerd runs without a bridge or iptables rules: every container of the
# backend uses the host's network and binds 127.0.0.1, so no traffic ever
# goes to a container's address. A dockerd started here is bounded in time,
# and stopped (its containers with it) by docker_down.

DOCKERD_DIR="${ZKPUBSUB_DOCKERD_DIR:-/run/zkpubsub-dockerd}"
DOCKERD_LIFETIME="${ZKPUBSUB_DOCKERD_LIFETIME:-7200}"
# the tests of the container backend in CI: core pub/sub, work queue, the
# cleaner, the server controls, and a 3-server ensemble losing a container
CONTAINER_SUBSET=(
    tests/test_pubsub.py
    tests/test_workqueue.py
    tests/test_cleaner.py
    tests/test_testing.py
    tests/test_containers.py
    tests/faults/test_pubsub_faults.py::test_2_kill_the_follower_the_clients_are_connected_to
)

docker_answers() {
    command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1
}

docker_up() {
    if docker_answers; then
        return
    fi
    if ! command -v dockerd >/dev/null 2>&1; then
        echo "installing Docker from Debian's packages..." >&2
        as_root apt-get update -qq
        apt_install docker.io
    fi
    echo "starting dockerd (no bridge, no iptables; at most ${DOCKERD_LIFETIME} s)..." >&2
    as_root mkdir -p "$DOCKERD_DIR"
    as_root setsid timeout --kill-after=30 "$DOCKERD_LIFETIME" \
        dockerd --bridge=none --iptables=false --ip-masq=false \
        --pidfile "$DOCKERD_DIR/dockerd.pid" --log-level=warn \
        </dev/null >"$DOCKERD_DIR/dockerd.log" 2>&1 &
    local i
    for i in $(seq 60); do
        if docker_answers; then
            as_root touch "$DOCKERD_DIR/started-here"
            return
        fi
        sleep 1
    done
    echo "dockerd did not answer in 60 s:" >&2
    tail -20 "$DOCKERD_DIR/dockerd.log" >&2 || true
    docker_down
    exit 1
}

docker_down() {
    # a dockerd started here: the backend's containers (the fixtures remove
    # them; these are leftovers of a run that was killed), then dockerd and
    # everything it runs. An engine someone else runs is left alone.
    [ -f "$DOCKERD_DIR/started-here" ] || return 0
    if docker_answers; then
        local ids
        ids=$(docker ps -aq --filter label=zkpubsub.testing)
        if [ -n "$ids" ]; then
            echo "removing leftover containers: $ids" >&2
            # shellcheck disable=SC2086
            docker rm -f $ids >/dev/null || true
        fi
    fi
    local pid i
    pid=$(cat "$DOCKERD_DIR/dockerd.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && as_root kill -0 "$pid" 2>/dev/null; then
        echo "stopping dockerd..." >&2
        as_root kill -TERM "$pid" || true
        for i in $(seq 30); do
            as_root kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        if as_root kill -0 "$pid" 2>/dev/null; then
            as_root kill -KILL "$pid" || true
        fi
    fi
    as_root rm -f "$DOCKERD_DIR/started-here"
}

zookeeper_image() {
    # the image the container backend should use: $ZKPUBSUB_ZOOKEEPER_IMAGE,
    # or one built here from a Debian release's packages
    if [ -n "${ZKPUBSUB_ZOOKEEPER_IMAGE:-}" ]; then
        echo "$ZKPUBSUB_ZOOKEEPER_IMAGE"
        return
    fi
    if ! command -v mmdebstrap >/dev/null 2>&1; then
        echo "installing mmdebstrap..." >&2
        as_root apt-get update -qq
        apt_install mmdebstrap
    fi
    bash scripts/zookeeper-image.sh "${1:-bookworm}"
}

# -- other Pythons ---------------------------------------------------------------------
# The package says it runs on Python 3.10 and later (pyproject.toml); the main
# venv has the machine's python3. These run a core of the suite on the others:
# the pure modules, publishing and receiving, the work queue, asyncio, the
# connection's handling of kazoo, security, the gateway (over TLS too) and the CLI.
PYTHONS_DEFAULT=(3.10 3.12 3.13)
PYTHONS_SUBSET=(
    tests/test_envelope.py
    tests/test_layout.py
    tests/test_buffer.py
    tests/test_planning.py
    tests/test_ranking.py
    tests/test_bad_input.py
    tests/test_connection.py
    tests/test_pubsub.py
    tests/test_receive.py
    tests/test_workqueue.py
    tests/test_aio.py
    tests/test_cache.py
    tests/test_security.py
    tests/test_gateway.py
    tests/test_gateway_faults.py
    tests/test_cli.py
)

find_python() {
    # python3.X on the PATH (a working one: a pyenv shim of a version that is
    # not selected fails), else one of pyenv's installs
    local version="$1" candidate
    for candidate in "$(command -v "python$version" 2>/dev/null || true)" \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/"python$version"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ] &&
            "$candidate" -c 'import sys, venv' >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

test_pythons() {
    local versions=() args=() version python venv status=0 started oldest
    # the oldest Python the package supports, from pyproject's requires-python
    oldest=$(sed -n 's/^requires-python = ">=\(3\.[0-9]*\)"$/\1/p' pyproject.toml)
    while [ "$#" -gt 0 ]; do
        if [ "$1" = "--" ]; then
            shift; args=("$@"); break
        fi
        if ! [[ "$1" =~ ^3\.[0-9]+$ ]]; then
            echo "pythons: not a Python version: $1 (3.X, or -- before pytest's arguments)" >&2
            exit 2
        fi
        if [ -n "$oldest" ] && [ "${1#3.}" -lt "${oldest#3.}" ]; then
            echo "pythons: zkpubsub needs Python $oldest or later (requires-python), not $1" >&2
            exit 2
        fi
        versions+=("$1"); shift
    done
    if [ "${#versions[@]}" -eq 0 ]; then
        versions=("${PYTHONS_DEFAULT[@]}")
    fi
    if [ "${#args[@]}" -eq 0 ]; then
        args=("${PYTHONS_SUBSET[@]}")
    fi
    for version in "${versions[@]}"; do
        if ! python=$(find_python "$version"); then
            if [ -n "${CI:-}" ]; then  # CI must not pass having tested nothing
                status=1
                echo "Python $version: not found on this machine: FAILED (CI tests every one)" >&2
            else
                echo "Python $version: not found on this machine, skipped" >&2
            fi
            continue
        fi
        venv=".venv-pythons/$version"
        started=$(date +%s)
        install_venv "$venv" "$python" test
        echo "Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())'): running ${#args[@]} test paths..." >&2
        if in_background "$venv/bin/python" -m pytest -q -p no:cacheprovider "${args[@]}"; then
            echo "Python $version: passed in $(($(date +%s) - started)) s" >&2
        else
            status=1
            echo "Python $version: FAILED after $(($(date +%s) - started)) s" >&2
        fi
    done
    return "$status"
}

CHILD=""

on_signal() {
    # stop the tests at once (their containers are then removed by docker_down)
    if [ -n "$CHILD" ]; then
        kill -TERM "$CHILD" 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
    fi
    exit "$1"
}

with_docker() {
    # dockerd and the containers go when the command ends, however it ends
    trap docker_down EXIT
    trap 'on_signal 143' TERM
    trap 'on_signal 130' INT
    trap 'on_signal 129' HUP
    docker_up
}

in_background() {
    # run "$@" as a child this shell can stop on a signal, and wait for it
    local status=0
    "$@" &
    CHILD=$!
    wait "$CHILD" || status=$?
    CHILD=""
    return "$status"
}

test_containers() {
    with_docker
    local image started status=0
    image=$(zookeeper_image)
    started=$(date +%s)
    if [ "$#" -eq 0 ]; then
        set -- "${CONTAINER_SUBSET[@]}"
    fi
    echo "running tests in containers of $image..." >&2
    ZKPUBSUB_TEST_BACKEND=testcontainers ZKPUBSUB_ZOOKEEPER_IMAGE="$image" \
        in_background "$VENV/bin/pytest" -q -p no:cacheprovider "$@" || status=$?
    echo "tests in containers took $(($(date +%s) - started)) s" >&2
    return "$status"
}

case "${1:-}" in
    install) install ;;
    demo) install; shift; exec "$VENV/bin/zkpubsub" demo "$@" ;;
    test) install; shift; exec "$VENV/bin/pytest" -q --durations=30 tests "$@" ;;
    test-bench)
        install
        shift
        exec "$VENV/bin/pytest" -q --durations=10 -m bench tests/test_benchmarks.py "$@"
        ;;
    check)
        install
        "$VENV/bin/ruff" check .
        "$VENV/bin/ruff" format --check .
        "$VENV/bin/mypy"
        ;;
    test-containers) install_venv; shift; test_containers "$@" ;;
    image)
        shift
        with_docker
        zookeeper_image "$@"
        ;;
    docker-down) docker_down ;;
    pythons)
        install_zookeeper
        install_openssl
        shift
        trap 'on_signal 143' TERM
        trap 'on_signal 130' INT
        test_pythons "$@"
        ;;
    matrix)
        install_venv
        shift
        with_docker
        if ! command -v mmdebstrap >/dev/null 2>&1; then
            as_root apt-get update -qq
            apt_install mmdebstrap
        fi
        in_background "$VENV/bin/python" scripts/version_matrix.py "$@"
        ;;
    *)
        echo "usage: bash scripts/dev.sh install|demo|test|test-bench|check|test-containers|pythons|matrix|image|docker-down" >&2
        exit 2
        ;;
esac
