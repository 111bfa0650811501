#!/usr/bin/env bash
# adrank's one entry point for people and CI.
#
#   ./dev.sh demo    set up this machine, start the local stack, run the whole chain once
#                    (`adrank demo`; add --quick for the few-minute version)
#   ./dev.sh test    set up this machine, run clippy and every test (what .ci/run calls)
#   ./dev.sh setup   only install what is missing (idempotent; skips what is present)
#   ./dev.sh setup-gpu  also ONNX Runtime's GPU build, for `--features cuda` (docs/serving.md)
#
# Everything comes from the package registries: Debian's apt, PyPI (the ONNX Runtime wheel) and
# crates.io (tansu). Tools built once per machine live in the cache folder
# (ADRANK_CACHE_DIR, default ~/.cache/adrank); the ONNX Runtime library in .adrank/onnxruntime/.
set -euo pipefail

cd "$(dirname "$0")"
ROOT=$(pwd)
CACHE=${ADRANK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/adrank}
ORT_VERSION=1.31.1
TANSU_VERSION=0.6.0
ORT_DIR=$ROOT/.adrank/onnxruntime
TANSU=$CACHE/tansu-$TANSU_VERSION/bin/tansu
APT_PACKAGES=(cmake pkg-config libcurl4-openssl-dev libssl-dev zlib1g-dev libclang-dev
              openmpi-bin libopenmpi-dev redis-server python3 python3-pip python3-venv g++ make)
# Without their recommends: promtool alone (it checks every metrics page and the alert rules in
# the tests; the recommends would add node exporters and their daemons), and headless Chromium
# with one font (it loads the X-Ray dashboard in the tests).
APT_BARE_PACKAGES=(prometheus chromium fonts-dejavu-core)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root to run: $* (install sudo or run as root)"; fi
}

# not_installed PACKAGE...: those of them not installed.
not_installed() {
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
    done
}

setup_apt() {
    local missing bare
    mapfile -t missing < <(not_installed "${APT_PACKAGES[@]}")
    mapfile -t bare < <(not_installed "${APT_BARE_PACKAGES[@]}")
    if [ ${#missing[@]} -gt 0 ] || [ ${#bare[@]} -gt 0 ]; then
        say "installing Debian packages: ${missing[*]} ${bare[*]}"
        as_root apt-get update -q
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    fi
    if [ ${#bare[@]} -gt 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${bare[@]}"
    fi
}

setup_rust() {
    command -v cargo >/dev/null || die "cargo not found: install Rust (rustup, https://rustup.rs) and run this again"
}

# install_ort PACKAGE DIR: ONNX Runtime's shared libraries from PyPI's PACKAGE wheel into DIR.
install_ort() {
    local package=$1 dir=$2
    [ -f "$dir/libonnxruntime.so.$ORT_VERSION" ] && return
    say "installing ONNX Runtime $ORT_VERSION from the PyPI wheel $package into $dir"
    local tmp
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: "$package==$ORT_VERSION" -d "$tmp"
    mkdir -p "$dir"
    # The wheel is a zip; only its shared libraries are needed.
    python3 - "$tmp"/*.whl "$dir" <<'PY'
import sys, zipfile, os
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("onnxruntime/capi/libonnxruntime"):
            target = os.path.join(dest, os.path.basename(name))
            with z.open(name) as src, open(target + ".tmp", "wb") as out:
                out.write(src.read())
            os.replace(target + ".tmp", target)
PY
    rm -rf "$tmp"
    [ -f "$dir/libonnxruntime.so.$ORT_VERSION" ] || die "the $package wheel did not contain libonnxruntime.so.$ORT_VERSION"
}

setup_onnxruntime() {
    install_ort onnxruntime "$ORT_DIR"
}

# The GPU build (CUDA 13, cuDNN 9; about 250 MB) for `--features cuda` and
# `onnxruntime.execution_provider = "cuda"`; not needed otherwise.
setup_gpu() {
    setup_rust
    install_ort onnxruntime-gpu "$ROOT/.adrank/onnxruntime-gpu"
    say "built with: cargo build --release --features cuda --bin adrank"
    say "run with:   ADRANK_ONNXRUNTIME__LIBRARY_PATH=$ROOT/.adrank/onnxruntime-gpu/libonnxruntime.so.$ORT_VERSION ADRANK_ONNXRUNTIME__EXECUTION_PROVIDER=cuda"
    say "            (CUDA 13 and cuDNN 9 libraries on LD_LIBRARY_PATH)"
}

# Python tools the tests use, in their own virtual environment: kubernetes-validate checks the
# manifests under deploy/ against Kubernetes' schemas; onnx (the format's reference library)
# writes models with their weights in a file beside them, as PyTorch's exporter does; grpcio
# and grpcio-tools are the gRPC API's client that is not adrank (examples/grpc/rank.py).
setup_tools() {
    local tools=$ROOT/.adrank/tools
    [ -x "$tools/bin/kubernetes-validate" ] && "$tools/bin/python" -c "import onnx, grpc, grpc_tools" 2>/dev/null && return
    say "installing kubernetes-validate, onnx and grpcio into .adrank/tools"
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet "kubernetes-validate==1.37.0" "onnx==1.23.2" "grpcio==1.85.1" "grpcio-tools==1.85.1"
}

setup_tansu() {
    [ -x "$TANSU" ] && return
    say "building the tansu $TANSU_VERSION broker into $CACHE (once per machine, about 10 minutes on 2 cores)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
        --root "$CACHE/tansu-$TANSU_VERSION"
}

# PyTorch for the bring-your-own-model test (examples/pytorch/): the PyPI wheel with its CUDA
# libraries is several GB, so it lives in the cache, installed once per machine (about a minute
# and 5.6 GB here), like tansu. Only the tests need it.
TORCH_VENV=$CACHE/torch-venv
setup_torch() {
    [ -x "$TORCH_VENV/bin/python" ] && "$TORCH_VENV/bin/python" -c "import torch, onnxscript, pyarrow" 2>/dev/null && return
    say "installing PyTorch into $TORCH_VENV (once per machine, several GB)"
    python3 -m venv "$TORCH_VENV"
    "$TORCH_VENV/bin/pip" install --quiet "torch==2.15.0" "numpy==2.4.6" "pyarrow==26.0.1" "onnx==1.23.2" \
        "onnxscript==0.7.2"
}

setup() {
    setup_apt
    setup_rust
    setup_onnxruntime
    setup_tools
    setup_tansu
}

redis_answers() {
    (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && timeout 2 head -c 5 <&3 | grep -q PONG) 2>/dev/null
}

demo() {
    setup
    say "building adrank (release: the demo trains a model)"
    cargo build --release --locked --bin adrank
    say "starting the local stack"
    # The demo starts from nothing and ends with its report: a broker that keeps nothing on disk
    # leaves the two cores to serving and training (sqlite costs half a core at the demo's rate).
    ADRANK_STACK__KAFKA_STORAGE=${ADRANK_STACK__KAFKA_STORAGE:-memory} target/release/adrank up
    say "checking every dependency"
    target/release/adrank doctor
    say "the whole loop: history, a first model, traffic while the loop retrains, shadows, canaries and promotes"
    target/release/adrank demo "$@"
    say "the stack is still up; stop it with: target/release/adrank down"
}

test() {
    setup
    setup_torch
    redis_answers || die "Redis does not answer on 127.0.0.1:6379; the tests need it: \
redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no"
    say "rustfmt"
    cargo fmt --all -- --check
    say "clippy"
    cargo clippy --workspace --all-targets --locked -- -D warnings
    say "tests"
    cargo test --workspace --all-targets --locked
}

case "${1:-}" in
    demo) shift; demo "$@" ;;
    test) test ;;
    setup) setup ;;
    setup-gpu) setup_gpu ;;
    setup-torch) setup_torch ;;
    *) echo "usage: $0 demo|test|setup|setup-gpu|setup-torch" >&2; exit 2 ;;
esac
