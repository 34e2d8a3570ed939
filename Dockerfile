# dmx on a GPU machine or as a Ray cluster node image.
#
#   docker build -t dmx --build-arg GIT_COMMIT=$(git rev-parse HEAD) .
#   docker run --gpus all --shm-size=8g -v /data:/data -v $PWD/results:/results dmx
#   docker run --gpus all dmx python /opt/dmx/sweeps/cifar_sym.py --help
#
# Every node of a Ray cluster must run the same image (same Python, Ray and dmx versions).
# See docs/sweeps.md.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/dmx
# Dependencies first (their layer is reused while only the code changes). The base image's
# torch / torchvision satisfy dmx's ranges, so pip keeps them (the CUDA builds).
COPY pyproject.toml README.md ./
RUN mkdir dmx && touch dmx/__init__.py && pip install . && pip uninstall -y dmx && rm -rf dmx build
COPY dmx ./dmx
RUN pip install --no-deps . && rm -rf build
COPY sweeps ./sweeps

# The image is not a git checkout: the commit it was built from is recorded on every MLflow run.
ARG GIT_COMMIT=""
ENV DMX_GIT_COMMIT=${GIT_COMMIT}

# Results and the MLflow store live on a mounted volume; the data set too (or it is downloaded).
WORKDIR /results
EXPOSE 6379 8265 10001
CMD ["python", "/opt/dmx/sweeps/cifar_asym.py", \
     "--data-dir", "/data", "--download", \
     "--storage-path", "/results/ray_results", \
     "--mlflow-uri", "sqlite:////results/mlflow.db", \
     "--gpus-per-trial", "1"]
