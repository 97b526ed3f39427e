# Spartan Service: one image for the API (`spartan serve`) and the workers (`spartan worker`).
#   docker build -t spartan-service .                                   # CPU torch
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#                -t spartan-service-gpu .                                # CUDA torch
# TORCH_INDEX may be any wheel index (a local mirror where the PyTorch index is unreachable).

# -- build: torch, the project, and the Sparsifier's native library (needs a C compiler) ----
FROM python:3.11-slim AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
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
# compiler (root-owned, 0755: spartan._native trusts it; see its docstring).
RUN mkdir -m 0755 /opt/spartan-native \
    && cd / && SPARTAN_CACHE_DIR=/opt/spartan-native python -c \
       "from spartan import _native; print(_native.prebuild())" \
    && chmod 0755 /opt/spartan-native && chmod -R go-w /opt/spartan-native

# -- runtime: no compiler ------------------------------------------------------------------
FROM python:3.11-slim
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
