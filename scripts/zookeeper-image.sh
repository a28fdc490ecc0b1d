#!/usr/bin/env bash
# A ZooKeeper image built from a Debian release's own packages, for the
# container backend of zkpubsub.testing:
#   bash scripts/zookeeper-image.sh [--force] [SUITE [IMAGE]]
# SUITE is a Debian release the apt mirror serves (default bookworm: 3.8.0;
# bullseye: 3.4.13; trixie: 3.9.3); IMAGE defaults to zkpubsub-zookeeper:SUITE.
# An image built by this recipe is kept unless --force is given. Needs root
# (or sudo), mmdebstrap and a running Docker engine; prints the image name.
set -euo pipefail

# raised whenever what goes into the image changes, so that kept images are rebuilt
RECIPE=1

force=0
if [ "${1:-}" = "--force" ]; then
    force=1
    shift
fi
suite="${1:-bookworm}"
image="${2:-zkpubsub-zookeeper:$suite}"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else echo "need root (or sudo) to run: $*" >&2; exit 1
    fi
}

if [ "$force" -eq 0 ] && [ "$(docker image inspect \
    -f '{{index .Config.Labels "zkpubsub.image-recipe"}}' "$image" 2>/dev/null)" = "$RECIPE" ]; then
    echo "$image"
    exit 0
fi
command -v mmdebstrap >/dev/null 2>&1 || {
    echo "mmdebstrap is missing (Debian: apt-get install -y mmdebstrap)" >&2
    exit 1
}

echo "building $image from Debian $suite's zookeeper package..." >&2
started=$(date +%s)
work=$(mktemp -d)
trap 'as_root rm -rf "$work"' EXIT
# The essential set, the server's classes (libzookeeper-java: the package
# "zookeeper" adds a system service and, from bookworm on, a desktop Java
# runtime) and the release's headless Java runtime; no recommended packages,
# no documentation (manual pages stay: the runtime's alternatives point
# there). The server's configuration is mounted when it runs.
as_root timeout 900 mmdebstrap --quiet --variant=essential \
    --include=libzookeeper-java,default-jre-headless \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --aptopt='Acquire::Retries "3"' \
    "$suite" "$work/rootfs.tar"
docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL zkpubsub.image-recipe=$RECIPE" \
    --message "zookeeper from Debian $suite" "$work/rootfs.tar" "$image" >/dev/null
echo "built $image in $(($(date +%s) - started)) s" >&2
echo "$image"
