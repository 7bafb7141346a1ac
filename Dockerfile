# syntax=docker/dockerfile:1
#
# One image for every kueue-tes process: the API (`kueue-tes api`), the RQ worker
# (`kueue-tes worker`), the watcher (`kueue-tes watch`) and, inside each task pod, the `setup`,
# `sequencer` and `finish` containers (`python3 -m worker.sequencer...`, see docs/task-pod.md).
#
#   docker build -t kueue-tes:dev .
#
# The build stage installs the package into a virtual environment and fetches a static busybox;
# the final stage copies only those two onto a clean slim Python, runs as an unprivileged user and
# carries no compiler, package cache or pip.

ARG PYTHON_VERSION=3.11
ARG DEBIAN_RELEASE=bookworm

FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# busybox-static: the runner's tools, copied by the `setup` container into every task pod, where
# it runs inside executor images that may have no shell at all (distroless), so it must be static.
RUN apt-get update \
 && apt-get install -y --no-install-recommends busybox-static \
 && rm -rf /var/lib/apt/lists/* \
 && install -m 0755 "$(readlink -f /bin/busybox)" /opt/busybox \
 && if ldd /opt/busybox >/dev/null 2>&1; then echo "busybox is not static" >&2; exit 1; fi \
 && /opt/busybox sh -c 'echo busybox ok'
RUN python -m venv /opt/kueue-tes
WORKDIR /src
# Metadata first, so that the dependency layer is cached across source edits.
COPY setup.cfg pyproject.toml README.md ./
RUN mkdir -p app worker && touch app/__init__.py worker/__init__.py \
 && /opt/kueue-tes/bin/pip install . \
 && /opt/kueue-tes/bin/pip uninstall -y kueue-tes
COPY app ./app
COPY worker ./worker
COPY openapi ./openapi
# app/main.py reads the spec from <site-packages>/openapi, beside the `app` package, so the
# spec is copied there next to the installed package.
RUN /opt/kueue-tes/bin/pip install --no-deps . \
 && site="$(/opt/kueue-tes/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && cp -r openapi "$site/openapi" \
 && /opt/kueue-tes/bin/python -m compileall -q "$site" \
 && /opt/kueue-tes/bin/pip uninstall -y pip setuptools wheel \
 && /opt/kueue-tes/bin/python -c 'import app.main, worker.sequencer, worker.sequencer.setup'

FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="kueue-tes" \
      org.opencontainers.image.description="GA4GH TES 1.1 on Kubernetes; Kueue admits whole tasks" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/kueue-tes/kueue-tes" \
      org.opencontainers.image.documentation="https://github.com/kueue-tes/kueue-tes/tree/main/docs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
# The base image's own pip and setuptools are build tools this image never uses.
RUN python -m pip uninstall -y pip setuptools wheel >/dev/null 2>&1 || true \
 && groupadd --system --gid 10001 kueue-tes \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
      --shell /usr/sbin/nologin kueue-tes
COPY --from=build /opt/busybox /bin/busybox
COPY --from=build /opt/kueue-tes /opt/kueue-tes
# PATH: `kueue-tes` and `python3` (KUEUE_TES_POD_PYTHON) are the virtual environment's.
# HOME=/tmp: the root file system is read-only in every pod we start; /tmp is an emptyDir there
# (gunicorn keeps its control socket under $HOME).
ENV PATH=/opt/kueue-tes/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
ENTRYPOINT ["kueue-tes"]
CMD ["api"]
