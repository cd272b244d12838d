"""Sessions: tests (the README's test command), per-package installs, kernels, slow, slurm (a real
one-node Slurm cluster), browser (the HTML report in Chromium), lint, docs and the torch-version matrix.

torch is pinned in every session so that pip never resolves an unpinned ``torch`` to a
multi-GB CUDA download. nox's default virtualenv + pip backend is used on purpose: pip
finds the local torch wheels, uv does not.
"""
from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "virtualenv"
nox.options.sessions = ["tests", "lint"]

# The torch versions we test against: the one place to extend the matrix.
TORCH_VERSIONS = ["2.13.0", "2.14.1"]
DEFAULT_TORCH = TORCH_VERSIONS[0]

PACKAGES = {
    "ssm_layers": ["packages/ssm-layers[test]"],
    "adv_train": ["packages/adv-train[test]"],
    "ads": ["packages/ssm-layers", "packages/ads[test]"],
    "cli": ["packages/ssm-layers", "packages/adv-train", "packages/ads", "packages/cli[test]"],
}
ALL = ["packages/ssm-layers[test]", "packages/adv-train[test]", "packages/ads[test]", "packages/cli[test]"]
PYTEST = ["pytest", "-m", "not slow and not kernels and not slurm and not browser", "-p", "no:cacheprovider"]
WORKERS = ["-n", os.environ.get("ADVSSM_TEST_WORKERS", "2")]
# One intra-op thread per test worker: two workers of two OpenMP threads each on two cores spin-wait for each
# other (measured: tests about 10x slower on a loaded machine). Tests that need another count set it themselves.
TEST_ENV = {"OMP_NUM_THREADS": os.environ.get("ADVSSM_TEST_THREADS", "1")}


def _install(session: nox.Session, torch_version: str, *targets: str) -> None:
    session.install(f"torch=={torch_version}")
    session.install(*targets)


@nox.session
def tests(session: nox.Session) -> None:
    """Every package's default test suite on the default torch."""
    _install(session, DEFAULT_TORCH, *ALL)
    session.run(*PYTEST, *WORKERS, "packages", *session.posargs, env=TEST_ENV)


@nox.session
@nox.parametrize("torch_version", TORCH_VERSIONS)
def tests_matrix(session: nox.Session, torch_version: str) -> None:
    """The default suite against each supported torch version."""
    _install(session, torch_version, *ALL)
    session.run("python", "-c", "import torch; print('torch', torch.__version__)")
    session.run(*PYTEST, *WORKERS, "packages", *session.posargs, env=TEST_ENV)


@nox.session
@nox.parametrize("package", list(PACKAGES))
def package(session: nox.Session, package: str) -> None:
    """One package installed with only what it declares, running its own tests."""
    _install(session, DEFAULT_TORCH, *PACKAGES[package])
    folder = "packages/" + package.replace("_", "-")
    session.run(*PYTEST, *WORKERS, folder + "/tests", *session.posargs, env=TEST_ENV)


@nox.session
def ssm_layers_alone(session: nox.Session) -> None:
    """advssm-ssm-layers alone in a fresh venv: it installs and works without the other packages."""
    _install(session, DEFAULT_TORCH, *PACKAGES["ssm_layers"])
    session.run("python", "-c", "import importlib.util as u; assert u.find_spec('advssm.ads') is None")
    session.run(*PYTEST, *WORKERS, "packages/ssm-layers/tests", *session.posargs, env=TEST_ENV)


@nox.session
def kernels(session: nox.Session) -> None:
    """Triton kernels against the float64 references, under TRITON_INTERPRET=1 on the CPU, and every kernel
    compiled for sm_80 / sm_90 by Triton's compiler (test_compile_kernels.py, without the interpreter)."""
    _install(session, DEFAULT_TORCH, "packages/ssm-layers[test,triton]")
    session.run("pytest", "-m", "kernels", "-p", "no:cacheprovider", *WORKERS,
                "packages/ssm-layers/tests", *session.posargs, env={"TRITON_INTERPRET": "1"})
    # the GPU verification's dry run, here with triton installed (the tests session has none)
    session.run("pytest", "-p", "no:cacheprovider", "packages/ssm-layers/tests/test_gpu_verify.py")


@nox.session(venv_params=["--system-site-packages"])
def gpu(session: nox.Session) -> None:
    """benchmarks/gpu_verify.py on a CUDA machine, over the machine's own torch and triton: the kernels
    compiled vs the float64 references, their speed, a training step of each paper preset.

    The packages are installed with --no-deps (nothing but torch is needed); offline, where pip
    cannot fetch the build backend, the script imports them from the source tree instead.
    """
    try:
        session.install("--no-deps", "packages/ssm-layers", "packages/adv-train")
    except nox.command.CommandFailed:
        session.warn("could not install the packages; gpu_verify.py imports them from the source tree")
    session.run("python", "benchmarks/gpu_verify.py", *session.posargs)


@nox.session
def slow(session: nox.Session) -> None:
    """Long end-to-end runs."""
    _install(session, DEFAULT_TORCH, *ALL)
    session.run("pytest", "-m", "slow", "-p", "no:cacheprovider", "packages", *session.posargs)


@nox.session
def slurm(session: nox.Session) -> None:
    """The sweep's Slurm executor against a real one-node Slurm cluster on this machine.

    .ci/slurm/start.sh installs Debian's Slurm and munge packages when they are missing (root, apt-get),
    starts munged, slurmctld and slurmd under this session's tmp folder, and .ci/slurm/stop.sh stops them
    by their PIDs afterwards, whatever the tests did.
    """
    _install(session, DEFAULT_TORCH, *ALL)
    state = os.path.join(session.create_tmp(), "slurm")
    session.run("bash", ".ci/slurm/stop.sh", state, external=True)  # daemons a killed session left behind
    session.run("bash", ".ci/slurm/start.sh", state, external=True)
    try:
        session.run("pytest", "-m", "slurm", "-p", "no:cacheprovider", "packages/cli/tests", *session.posargs,
                    env={"SLURM_CONF": os.path.join(state, "slurm.conf"), "ADVSSM_SLURM_TESTS": "1"})
    finally:
        session.run("bash", ".ci/slurm/stop.sh", state, external=True)


@nox.session
def browser(session: nox.Session) -> None:
    """report.html in a real headless Chromium: no console error, every plot visible, sorting, the sweep's grid.

    .ci/browser/install.sh installs Debian's chromium when it is missing (root, apt-get); each test module
    starts Chromium with an empty profile and stops it by its PID.
    """
    _install(session, DEFAULT_TORCH, *PACKAGES["cli"])
    session.run("bash", ".ci/browser/install.sh", external=True)
    session.run("pytest", "-m", "browser", "-p", "no:cacheprovider", "packages/cli/tests", *session.posargs,
                env=TEST_ENV)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "packages", "benchmarks", "noxfile.py")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site with --strict (API reference from the docstrings)."""
    _install(session, DEFAULT_TORCH, "packages/ssm-layers", "packages/adv-train", "packages/ads", "packages/cli")
    session.install("mkdocs-material", "mkdocstrings[python]")
    session.run("mkdocs", "build", "--strict", "--site-dir", os.path.join(session.create_tmp(), "site"))


@nox.session
def build(session: nox.Session) -> None:
    """A wheel and an sdist for each package, with hatch."""
    session.install("hatch")
    out = os.path.abspath(os.path.join(session.create_tmp(), "dist"))
    for folder in ("ssm-layers", "adv-train", "ads", "cli"):
        with session.chdir(f"packages/{folder}"):
            session.run("hatch", "build", "-t", "wheel", "-t", "sdist", out)
    session.log(f"built into {out}: " + ", ".join(sorted(os.listdir(out))))
