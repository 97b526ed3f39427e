# Spartan Service: one image for the API (`spartan serve`) and the workers (`spartan worker`).
#   docker build -t spartan-service .                       # CPU torch
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t spartan-gpu .
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# torch first, from the chosen wheel index: the project's torch range is then already met and
# pip pulls no CUDA wheels into a CPU image. Its own layer, so code changes do not rebuild it.
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX}"
# A C compiler: the Sparsifier builds its fused CPU passes (spartan/_native.c) at first use.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md ./
COPY spartan/ spartan/
COPY costmodels/ costmodels/
COPY jobs/ jobs/
COPY worker/ worker/
COPY service/ service/
RUN pip install .

RUN useradd --create-home --uid 10001 spartan && mkdir /data && chown spartan /data
USER spartan
ENV SPARTAN_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8000

# The API alone: workers run as their own containers (see docker-compose.yml). Binding
# 0.0.0.0 needs SPARTAN_API_TOKENS (spartan serve refuses otherwise).
CMD ["spartan", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "0"]
