#!/usr/bin/env bash
# launch_cluster.sh — the one command of the tensor-parallel course.
#
#   ./launch_cluster.sh lab              set up, start the cluster, open JupyterLab on notebooks/
#   ./launch_cluster.sh start [-n N]     start a cluster (one engine per GPU; 4 CPU engines without)
#   ./launch_cluster.sh status           list each engine: rank, host, device, pid
#   ./launch_cluster.sh stop             stop it: no controller or engine is left running
#   ./launch_cluster.sh export NB.ipynb  write the notebook as a torchrun job (--pbs: a Derecho job too)
#   ./launch_cluster.sh test [ARGS]      set up the test environment and run the test suite
#   ./launch_cluster.sh kernel           install a JupyterHub kernel spec for this environment
#   ./launch_cluster.sh COMMAND --help   the options of each command
#
# The Python environment: an active conda env or virtualenv is used as it is
# (conda users: conda env create -f environment.yml); otherwise a venv is made
# in .venv from pyproject.toml, once ($TP_PYTHON, if set, is used as it is).  Process management lives in helpers/cluster/.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${TP_VENV:-$REPO/.venv}"
# CPU machines get the CPU build of torch (an unpinned torch pulls a multi-GB CUDA build).
TP_TORCH_CPU="${TP_TORCH_CPU:-torch==2.13.0}"

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
}

die() { echo "launch_cluster.sh: $*" >&2; exit 2; }

have_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

# ensure_env EXTRA: set $PY to a python that has this project (and EXTRA) installed.
ensure_env() {
    local extra="$1" spec="." stamp want
    [[ -n "$extra" ]] && spec=".[$extra]"
    if [[ -n "${TP_PYTHON:-}" ]]; then  # set by the PBS job script: the submitting env's python
        PY="$TP_PYTHON"
        return
    fi
    if [[ -n "${VIRTUAL_ENV:-}" || -n "${CONDA_PREFIX:-}" ]] && [[ "${VIRTUAL_ENV:-}" != "$VENV" ]]; then
        PY="$(command -v python)"
        if ! "$PY" -c "import helpers.cluster.tpcluster, torch" >/dev/null 2>&1; then
            echo "Installing this project into the active environment ($PY) ..." >&2
            (cd "$REPO" && "$PY" -m pip install -q -e "$spec") || die "pip install -e '$spec' failed in the active environment"
        fi
        if [[ "$extra" == test ]] && ! "$PY" -c "import pytest, nbclient, playwright" >/dev/null 2>&1; then
            (cd "$REPO" && "$PY" -m pip install -q -e "$spec") || die "pip install -e '$spec' failed"
        fi
        return
    fi
    PY="$VENV/bin/python"
    want="$(cat "$REPO/pyproject.toml" | cksum | cut -d' ' -f1)-$extra"
    stamp="$VENV/.tp-installed"
    if [[ -x "$PY" && -f "$stamp" ]] && { [[ "$(cat "$stamp")" == "$want" ]] || [[ "$extra" == "" && "$(cat "$stamp")" == "${want}test" ]]; }; then
        return
    fi
    local base
    base="$(command -v python3 || true)"
    [[ -n "$base" ]] || die "python3 not found: install Python 3.10 or newer"
    "$base" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die "Python 3.10 or newer is needed, $base is $("$base" -V 2>&1)"
    echo "Setting up the Python environment in $VENV (once; a few minutes) ..." >&2
    [[ -x "$PY" ]] || "$base" -m venv "$VENV" || die "could not create a venv in $VENV"
    if ! have_gpu; then
        "$PY" -m pip install -q "$TP_TORCH_CPU" || die "pip install $TP_TORCH_CPU failed"
    fi
    # mpi4py must be built against the MPI on this machine (Debian's MPICH, Cray MPICH).
    if [[ "$extra" == test ]] && command -v mpicc >/dev/null 2>&1; then
        MPICC="$(command -v mpicc)" "$PY" -m pip install -q --no-binary=mpi4py "mpi4py>=3.1" \
            || die "building mpi4py against $(command -v mpicc) failed"
    fi
    (cd "$REPO" && "$PY" -m pip install -q -e "$spec") || die "pip install -e '$spec' failed"
    echo "$want" >"$stamp"
}

cmd="${1:-}"
case "$cmd" in
    ""|-h|--help|help)
        usage
        [[ -n "$cmd" ]] && exit 0 || exit 2
        ;;
    start|stop|status|lab|export)
        shift
        # --help sets nothing up and starts nothing
        for a in "$@"; do
            if [[ "$a" == -h || "$a" == --help ]]; then
                helper_py="$VENV/bin/python"
                [[ -x "$helper_py" ]] || helper_py="$(command -v python3)"
                cd "$REPO" && "$helper_py" -m helpers.cluster.cli "$cmd" --help 2>/dev/null || usage
                exit 0
            fi
        done
        ensure_env ""
        if [[ "$cmd" == export ]]; then
            # its paths are the caller's: run from here, with this project importable
            PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m helpers.cluster.cli export "$@"
        fi
        cd "$REPO"
        exec "$PY" -m helpers.cluster.cli "$cmd" "$@"
        ;;
    test)
        shift
        if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
            echo "usage: launch_cluster.sh test [PYTEST ARGS]"
            echo "Sets up the test environment (.venv with the 'test' extra) and runs pytest on tests/."
            echo "GPU tests are marked 'gpu' and skip without GPUs; CI=true makes missing tools (chromium, mpiexec) failures."
            exit 0
        fi
        ensure_env test
        cd "$REPO"
        exec "$PY" -m pytest "$@"
        ;;
    kernel)
        shift
        if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
            echo "usage: launch_cluster.sh kernel [NAME]"
            echo "Installs a Jupyter kernel spec (default name tp-hands-on) for this environment in ~/.local,"
            echo "so JupyterHub (e.g. NCAR's) offers it in the launcher."
            exit 0
        fi
        ensure_env ""
        name="${1:-tp-hands-on}"
        exec "$PY" -m ipykernel install --user --name "$name" --display-name "Python (tensor parallel course)"
        ;;
    *)
        die "unknown command '$cmd'; one of: lab, start, stop, status, export, test, kernel (--help lists them)"
        ;;
esac
