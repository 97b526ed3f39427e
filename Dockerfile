# Spartan Service: one image for the API (`spartan serve`) and the workers (`spartan worker`).
#   docker build -t spartan-service .                                   # CPU torch
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#                -t spartan-service-gpu .                                # CUDA torch
# Sites without Docker Hub or the PyTorch index (docs/deployment.md, docker/build-offline.sh):
#   BASE_IMAGE       any Debian-based image whose `python` is CPython 3.11 with venv (made with
#                    debootstrap and `docker import`, say)
#   TORCH_INDEX      any wheel index holding torch 2.13.0 and its dependencies (a local mirror)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST, PIP_FIND_LINKS, PIP_NO_INDEX:
#                    pip's own settings, for a PyPI mirror or a folder of wheels served over HTTP
ARG BASE_IMAGE=python:3.11-slim

# -- build: torch, the project, and the Sparsifier's native library (needs a C compiler) ----
FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# pip reads these from the environment; the build args only live in this stage.
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_TRUSTED_HOST=
ARG PIP_FIND_LINKS=
ARG PIP_NO_INDEX=0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# torch first, from the chosen wheel index: the project's torch range is then already met and
# pip pulls no CUDA wheels into a CPU image. Its own layer, so code changes do not rebuild it.
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY spartan/ spartan/
COPY costmodels/ costmodels/
COPY jobs/ jobs/
COPY worker/ worker/
COPY service/ service/
COPY cli/ cli/
COPY zoo/ zoo/
RUN pip install .
# The portable build of spartan/_native.c, made here once: containers load it without a
# compiler. Root-owned and writable by root alone, so spartan._native trusts it (see its
# docstring); readable by all, since the build leaves it 0700 and containers run as `spartan`.
RUN mkdir -m 0755 /opt/spartan-native \
    && cd / && SPARTAN_CACHE_DIR=/opt/spartan-native python -c \
       "from spartan import _native; print(_native.prebuild())" \
    && chmod -R a+rX,go-w /opt/spartan-native
# What the service never runs (about 190 MB): pip, torch's C++ headers (there is no compiler
# at run time), its C++ test programs and protoc. setuptools stays (torch declares it), and so
# do the .pyc files: without them every process start compiles torch again (docs/deployment.md).
RUN cd "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && rm -rf torch/include torch/test torch/bin/test_* torch/bin/protoc* torch/lib/*_test.so \
    && pip uninstall -y -q pip

# -- runtime: no compiler ------------------------------------------------------------------
FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    SPARTAN_CACHE_DIR=/opt/spartan-native \
    SPARTAN_DATA_DIR=/data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/spartan-native /opt/spartan-native
RUN useradd --create-home --uid 10001 spartan && mkdir /data && chown spartan /data
USER spartan
WORKDIR /home/spartan
VOLUME ["/data"]
EXPOSE 8000

# The API alone: workers run as their own containers (see docker-compose.yml). Binding
# 0.0.0.0 needs SPARTAN_API_TOKENS (spartan serve refuses to start otherwise).
CMD ["spartan", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "0"]
