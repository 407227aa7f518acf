# searcher image: the same image runs `searcher worker` (one per GPU) and
# `searcher dashboard`. TensorFlow, CUDA and cuDNN come from the base image;
# pyproject asks for tensorflow>=2.16,<3, so pip keeps the TensorFlow it finds.
#
#   docker build -t searcher:local .
#   docker run --rm --gpus all searcher:local worker cifar-cnn --storage URL
#
# Bump TF_VERSION to move TensorFlow and CUDA together; the build fails if pip
# ever replaces the base image's TensorFlow (its CUDA libraries would not match).
ARG TF_VERSION=2.21.0
FROM tensorflow/tensorflow:${TF_VERSION}-gpu
ARG TF_VERSION

# PIP_BREAK_SYSTEM_PACKAGES: the base image installs TensorFlow into the system
# Python with pip, and we add to that same environment. Older pip ignores it.
# CUDA_DEVICE_ORDER: GPU numbers match nvidia-smi, so `--gpu auto` picks the
# same index for the same card in every container on the host.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    CUDA_DEVICE_ORDER=PCI_BUS_ID \
    TF_CPP_MIN_LOG_LEVEL=1

WORKDIR /opt/searcher

# Dependencies first, from pyproject.toml alone, so editing the code does not
# reinstall optuna, plotly and friends. The empty package is a placeholder.
COPY pyproject.toml README.md ./
RUN mkdir searcher && touch searcher/__init__.py \
 && python3 -m pip install --no-cache-dir . \
 && python3 -m pip uninstall -y searcher \
 && rm -rf searcher build ./*.egg-info

COPY searcher ./searcher
RUN python3 -m pip install --no-cache-dir --no-deps . \
 && rm -rf build ./*.egg-info \
 && python3 -c "import importlib.metadata as m, sys; v = m.version('tensorflow'); sys.exit(0 if v == '${TF_VERSION}' else 'pip replaced the base image TensorFlow ${TF_VERSION} with ' + v)" \
 && searcher --help > /dev/null

# Non-root user. 10001 avoids the uid 1000 user some base images already have.
# /var/lib/searcher/locks holds the per-GPU lock files of `--gpu auto`; a new
# named volume mounted there copies this owner, so the user can write to it.
RUN groupadd --gid 10001 searcher \
 && useradd --uid 10001 --gid 10001 --no-log-init --create-home --shell /usr/sbin/nologin searcher \
 && mkdir -p /var/lib/searcher/locks \
 && chown -R 10001:10001 /var/lib/searcher

USER 10001:10001
WORKDIR /home/searcher
ENV SEARCHER_LOCK_DIR=/var/lib/searcher/locks

# optuna-dashboard, when the command is `dashboard --port 8080`.
EXPOSE 8080

ENTRYPOINT ["searcher"]
CMD ["--help"]
