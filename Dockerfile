# dmx on a GPU machine, and a Ray cluster node image (docker run, the Ray cluster launcher, KubeRay).
#
#   docker build -t dmx:$(git rev-parse --short HEAD) --build-arg GIT_COMMIT=$(git rev-parse HEAD) .
#   docker run --gpus all --shm-size=8g -v /data:/data -v $PWD/results:/results dmx:TAG
#   docker run --gpus all dmx:TAG python /opt/dmx/sweeps/cifar_sym.py --help
#
# Every node of a Ray cluster must run the same image: same Python, Ray, torch and dmx. Versions are
# locked by docker/constraints.txt (regenerate with `python docker/lock.py`), so images built on
# different days agree. Cluster recipes (KubeRay RayCluster, cluster launcher): docs/sweeps.md.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# wget: KubeRay's liveness / readiness probes call it; procps (ps) and curl: `ray status`, debugging.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget curl procps ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/dmx
# Dependencies first (their layer is reused while only the code changes), at the locked versions:
# torch 2.14.1 (the tested version; its PyPI wheel brings the CUDA libraries, the host needs only
# the NVIDIA driver and the container toolkit), ray[default] 2.60.0 (dashboard, metrics agent,
# what the cluster launcher and KubeRay expect), MLflow 3.17, Optuna 5.0.
COPY pyproject.toml README.md ./
COPY docker/constraints.txt docker/constraints.txt
RUN mkdir dmx && touch dmx/__init__.py \
    && pip install -c docker/constraints.txt ".[cluster]" \
    && pip uninstall -y dmx && rm -rf dmx build
COPY dmx ./dmx
RUN pip install --no-deps . && rm -rf build
# The sweep scripts and the read-back analysis (`python -m analysis.compare` from anywhere).
COPY sweeps ./sweeps
COPY analysis ./analysis
ENV PYTHONPATH=/opt/dmx

# The image is not a git checkout: the commit it was built from is recorded on every MLflow run.
ARG GIT_COMMIT=""
ENV DMX_GIT_COMMIT=${GIT_COMMIT}

# Results and the MLflow store live on a mounted volume; the data set too (or it is downloaded
# with --download). Ray: 6379 GCS, 8265 dashboard, 10001 client, 8080 metrics export.
WORKDIR /results
EXPOSE 6379 8265 10001 8080
CMD ["python", "/opt/dmx/sweeps/cifar_asym.py", \
     "--data-dir", "/data", "--download", \
     "--storage-path", "/results/ray_results", \
     "--mlflow-uri", "sqlite:////results/mlflow.db", \
     "--gpus-per-trial", "1"]
