#!/bin/sh
# Build the spartan-service image where Docker Hub and the Python indexes are unreachable:
#   docker/build-offline.sh WHEELS BASE_IMAGE [TAG]
# WHEELS      a folder of wheels (CPython 3.11, Linux x86_64) with torch 2.13.0 and every
#             dependency, made on a machine that reaches the indexes (docs/deployment.md):
#               pip download -d WHEELS --only-binary=:all: 'setuptools>=77' . \
#                 'torch==2.13.0' --extra-index-url https://download.pytorch.org/whl/cpu
# BASE_IMAGE  a local image whose `python` is CPython 3.11 with venv, Debian-based (the build
#             stage apt-gets gcc from its sources), e.g. one made with debootstrap
# The folder is served on 127.0.0.1:${WHEELS_PORT:-8765} while the build runs, which uses the
# host's network for that reason; nothing else is fetched by pip.
set -eu
[ $# -ge 2 ] || { sed -n '2,11p' "$0"; exit 2; }
wheels=$(cd "$1" && pwd) base=$2 tag=${3:-spartan-service} port=${WHEELS_PORT:-8765}
ls "$wheels"/torch-2.13.0*.whl >/dev/null || { echo "no torch 2.13.0 wheel in $wheels" >&2; exit 1; }
cd "$(dirname "$0")/.."
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$wheels" >/dev/null 2>&1 &
server=$!
trap 'kill $server' EXIT
sleep 1
docker build --network host \
  --build-arg BASE_IMAGE="$base" \
  --build-arg PIP_NO_INDEX=1 \
  --build-arg PIP_FIND_LINKS="http://127.0.0.1:$port/" \
  -t "$tag" .
